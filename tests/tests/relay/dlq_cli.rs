//! `outbox-relay dlq list` and `dlq show` as an operator meets them: an aligned table, NDJSON
//! for scripts, one dead letter in full, one-line errors. And they only ever read: a role with
//! nothing but SELECT can use them, and on a database the relay never migrated every `dlq`
//! command says to run `outbox-relay migrate` and creates nothing.

use std::process::Output;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use ordering_tests::relay::outbox::{insert_events, rows};
use ordering_tests::relay::process::{RelayEnv, relay_command};
use ordering_tests::relay::reader::ReadOnlyRole;
use ordering_tests::test_db::TestDatabase;
use outbox_relay::schema::TableNames;
use serde_json::Value;

const WIDTH: usize = 120;
const MIGRATE: &str = "run `outbox-relay migrate`";

fn run(env: &RelayEnv, args: &[&str]) -> Output {
    relay_command(env, args).output().expect("run outbox-relay")
}

/// Standard output of a command that must succeed.
fn ok(env: &RelayEnv, args: &[&str]) -> String {
    let out = run(env, args);
    assert!(
        out.status.success(),
        "outbox-relay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The one line on standard error of a command that must fail with status 1.
fn fails(env: &RelayEnv, args: &[&str]) -> String {
    let out = run(env, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "outbox-relay {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "outbox-relay {args:?}: want one line, got {stderr:?}");
    lines[0].to_owned()
}

fn env_for(url: &str) -> RelayEnv {
    RelayEnv::new(url, "test.dlq-cli")
        .set("COLUMNS", &WIDTH.to_string())
        .set("RUST_LOG", "off")
}

/// The error of the first dead letter: two lines, far wider than a terminal.
fn long_error() -> String {
    format!("broker refused the message (nack)\n{}", "queue full; ".repeat(30))
}

/// A migrated outbox with two events of three aggregates, the first event of `d-1`
/// dead-lettered with [`long_error`], that of `d-2` with "routing key over 255 bytes".
/// Returns the dead letters' outbox ids.
async fn dead_lettered(db: &TestDatabase) -> [i64; 2] {
    let names = TableNames::parse("outbox").unwrap();
    outbox_relay::schema::migrate(db.url(), &names, 16).await.unwrap();
    let mut conn = db.conn().await;
    let events = insert_events(&mut conn, "outbox", "d-", 3, 1, 2, 10).await;
    let stored = rows(&mut conn, "outbox").await;
    // Events are inserted sequence by sequence: the first three are the aggregates' first.
    let ids = [0, 1].map(|i| stored.iter().find(|r| r.event_id == events[i]).unwrap().id);
    let store = outbox_relay::store::Store::new(ordering_platform::db::pool(db.url(), 1, None), names, 16);
    for (id, error) in ids.iter().zip([long_error().as_str(), "routing key over 255 bytes"]) {
        store.dead_letter(*id, error).await.unwrap();
    }
    ids
}

/// Every relation, column, function and trigger of the schema `public`: what DDL would change.
async fn catalog(db: &TestDatabase) -> Vec<Value> {
    db.query_json(
        "SELECT 'relation' AS kind, c.relname || '.' || coalesce(a.attname, '') AS name \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE n.nspname = 'public' \
         UNION ALL SELECT 'function', p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'public' \
         UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal \
         ORDER BY 1, 2",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_an_aligned_table_cut_to_the_terminal_and_json_lines_for_scripts() {
    let db = TestDatabase::new().await;
    let ids = dead_lettered(&db).await;
    let env = env_for(db.url());

    let table = ok(&env, &["dlq", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {table}");
    assert!(
        lines[0].starts_with("OUTBOX ID  AGGREGATE") && lines[0].ends_with("LAST ERROR"),
        "{table}"
    );
    let error_at = lines[0].find("LAST ERROR").unwrap();
    for (line, id) in lines[1..].iter().zip(ids) {
        assert!(line.trim_start().starts_with(&format!("{id}  order/d-")), "{table}");
        assert!(line.chars().count() <= WIDTH, "wider than COLUMNS: {line}");
        assert_eq!(line.chars().nth(error_at - 1), Some(' '), "{table}");
    }
    assert!(
        lines[1].contains("broker refused the message") && lines[1].ends_with('…'),
        "{table}"
    );
    assert!(lines[2].ends_with("routing key over 255 bytes"), "{table}");

    let json = ok(&env, &["dlq", "list", "--json"]);
    let records: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2, "{json}");
    assert_eq!(records[0]["outbox_id"], ids[0]);
    assert_eq!(records[0]["last_error"], long_error(), "the error in full");
    assert_eq!(records[1]["aggregate_id"], "d-2");
    for field in [
        "event_id",
        "aggregate_type",
        "sequence",
        "event_type",
        "attempts",
        "dead_at",
    ] {
        assert!(records[1].get(field).is_some(), "{field} missing: {json}");
    }

    // A limit says what it left out: in the table, and on stderr beside pure NDJSON.
    let first = ok(&env, &["dlq", "list", "--limit", "1"]);
    assert_eq!(first.lines().count(), 3, "{first}");
    assert!(first.lines().last().unwrap().contains("showing 1 of 2"), "{first}");
    let out = run(&env, &["dlq", "list", "--json", "--limit", "1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 more"), "{out:?}");
    assert_eq!(ok(&env, &["dlq", "list", "--all"]), table);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_without_dead_letters_says_so() {
    let db = TestDatabase::new().await;
    let names = TableNames::parse("outbox").unwrap();
    outbox_relay::schema::migrate(db.url(), &names, 16).await.unwrap();
    let env = env_for(db.url());
    assert_eq!(ok(&env, &["dlq", "list"]), "no dead letters in outbox\n");
    assert_eq!(ok(&env, &["dlq", "list", "--json"]), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_one_dead_letter_with_its_payload_and_whole_error_and_an_unknown_id_fails_in_one_line() {
    let db = TestDatabase::new().await;
    let ids = dead_lettered(&db).await;
    let env = env_for(db.url());
    let stored: Value = serde_json::from_str(
        &rows(&mut db.conn().await, "outbox")
            .await
            .into_iter()
            .find(|r| r.id == ids[0])
            .unwrap()
            .payload,
    )
    .unwrap();

    let text = ok(&env, &["dlq", "show", &ids[0].to_string()]);
    assert!(text.starts_with(&format!("outbox id:      {}\n", ids[0])), "{text}");
    for field in [
        "event id:",
        "aggregate id:   d-1",
        "sequence:       1",
        "event type:",
        "attempts:",
        "dead since:",
        "headers:",
    ] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
    let (before, payload) = text.split_once("\npayload:\n").expect("a payload section");
    assert!(
        before.ends_with(&format!(
            "last error:\n  broker refused the message (nack)\n  {}",
            "queue full; ".repeat(30)
        )),
        "{text}"
    );
    assert!(payload.contains("\n  \"subject\": \"d-1\""), "pretty JSON: {payload}");
    assert_eq!(serde_json::from_str::<Value>(payload).unwrap(), stored);

    let json: Value = serde_json::from_str(&ok(&env, &["dlq", "show", &ids[0].to_string(), "--json"])).unwrap();
    assert_eq!(json["outbox_id"], ids[0]);
    assert_eq!(json["last_error"], long_error());
    assert_eq!(json["payload"], stored);
    assert_eq!(json["headers"]["x-test"], "yes");

    let line = fails(&env, &["dlq", "show", "999999"]);
    assert!(line.contains("no dead letter with outbox id 999999"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_show_work_with_nothing_but_select_and_change_no_schema() {
    let db = TestDatabase::new().await;
    let ids = dead_lettered(&db).await;
    let role = ReadOnlyRole::new(&db, &["outbox", "outbox_relay_dead_letters", "outbox_relay_schema"]).await;
    // The role really cannot run DDL: a command that tried would fail.
    let mut as_role = AsyncPgConnection::establish(role.url())
        .await
        .expect("log in as the role");
    let refused = as_role
        .batch_execute("CREATE TABLE dlq_probe (x int)")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("permission denied"), "{refused}");
    drop(as_role);
    let before = catalog(&db).await;
    let env = env_for(role.url());

    let table = ok(&env, &["dlq", "list"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_eq!(ok(&env, &["dlq", "list", "--json"]).lines().count(), 2);
    let shown = ok(&env, &["dlq", "show", &ids[1].to_string()]);
    assert!(
        shown.contains("routing key over 255 bytes") && shown.contains("\"subject\": \"d-2\""),
        "{shown}"
    );
    // Writing needs more than SELECT, and says so in one line.
    let line = fails(&env, &["dlq", "discard", &ids[0].to_string()]);
    assert!(line.contains("permission denied"), "{line}");

    assert_eq!(catalog(&db).await, before, "a read-only command changed the schema");
    assert_eq!(ok(&env_for(db.url()), &["dlq", "list", "--json"]).lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_database_never_migrated_every_dlq_command_says_to_migrate_and_creates_nothing() {
    let db = TestDatabase::new().await;
    let env = env_for(db.url());
    let before = catalog(&db).await;
    for args in [
        &["dlq", "list"][..],
        &["dlq", "list", "--json"],
        &["dlq", "show", "1"],
        &["dlq", "replay", "--all"],
        &["dlq", "discard", "1"],
    ] {
        let line = fails(&env, args);
        assert!(line.contains(MIGRATE) && line.contains("outbox"), "{args:?}: {line}");
    }
    assert_eq!(catalog(&db).await, before, "a dlq command ran DDL");
    assert!(
        !before
            .iter()
            .any(|r| r["name"].as_str().unwrap().starts_with("outbox_relay")),
        "the test database already had relay objects: {before:?}"
    );

    // A first migration that failed after creating the version table: still not migrated.
    let names = TableNames::parse("outbox").unwrap();
    outbox_relay::schema::migrate(db.url(), &names, 16).await.unwrap();
    let mut conn = db.conn().await;
    conn.batch_execute("DELETE FROM outbox_relay_schema").await.unwrap();
    let line = fails(&env, &["dlq", "list"]);
    assert!(
        line.contains("not in this database") && line.contains(MIGRATE),
        "{line}"
    );
    // Migrated further by a newer relay: steps only add, so this one still reads.
    conn.batch_execute("INSERT INTO outbox_relay_schema (version) VALUES (1), (99)")
        .await
        .unwrap();
    assert_eq!(ok(&env, &["dlq", "list"]), "no dead letters in outbox\n");
}
