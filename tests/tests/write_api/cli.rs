//! The command line of the three binaries: `--help` and `--version` answer without any
//! setting, usage errors are one line with status 2, and `write-api token` mints a token the
//! write-api accepts.

use std::collections::HashMap;
use std::time::Duration;

use ordering_tests::process::{ServiceProcess, run_for_output, run_to_exit};
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::SECRET;
use serde_json::json;
use uuid::Uuid;

const BINARIES: [(&str, &[&str]); 3] = [
    ("write-api", &["serve", "migrate", "token"]),
    ("outbox-relay", &["serve", "migrate", "dlq"]),
    ("read-api", &["serve", "migrate", "rebuild", "dlq"]),
];

/// Only `RUST_BACKTRACE=1`: no secret, no database, nothing else (`run_to_exit` clears the rest).
fn no_settings() -> HashMap<String, String> {
    HashMap::from([("RUST_BACKTRACE".to_owned(), "1".to_owned())])
}

fn one_line(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn help_and_version_answer_0_without_any_setting() {
    for (package, commands) in BINARIES {
        let out = run_for_output(package, &["--help"], &no_settings());
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{package} --help: {out:?}");
        for c in commands.iter().chain(&["DATABASE_URL", "RUST_LOG", "Exit status"]) {
            assert!(help.contains(c), "{package} --help does not mention {c}: {help}");
        }
        let out = run_for_output(package, &["--version"], &no_settings());
        assert_eq!(out.status.code(), Some(0), "{package} --version: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(package), "{out:?}");
        let out = run_for_output(package, &["help", commands[1]], &no_settings());
        assert_eq!(out.status.code(), Some(0), "{package} help {}: {out:?}", commands[1]);
    }
    let relay = run_for_output("outbox-relay", &["help", "dlq"], &no_settings());
    let relay = String::from_utf8_lossy(&relay.stdout);
    for c in ["list", "replay", "discard"] {
        assert!(relay.contains(c), "{relay}");
    }
    let read = run_for_output("read-api", &["help", "rebuild"], &no_settings());
    assert!(String::from_utf8_lossy(&read.stdout).contains("--from-available"));
}

#[test]
fn a_usage_error_exits_2_with_one_line_before_any_setting_is_read() {
    for (package, args) in [
        ("write-api", &["bogus"][..]),
        ("outbox-relay", &["bogus"]),
        ("read-api", &["bogus"]),
        ("outbox-relay", &["dlq", "discard", "not-an-id"]),
        ("read-api", &["rebuild", "--from-nowhere"]),
    ] {
        let (status, stderr) = run_to_exit(package, args, &no_settings());
        assert_eq!(status.code(), Some(2), "{package} {args:?}: {stderr}");
        let lines = one_line(&stderr);
        assert_eq!(lines.len(), 1, "{package} {args:?}: want one line, got {stderr:?}");
        assert!(!lines[0].contains("JWT_SECRET"), "{package} {args:?}: {stderr}");
    }
}

#[test]
fn token_refuses_a_bad_sub_role_or_ttl_or_a_missing_secret_in_one_line() {
    let sub = Uuid::now_v7().to_string();
    let secret = HashMap::from([("JWT_SECRET".to_owned(), SECRET.to_owned())]);
    for (args, env, names) in [
        (vec!["--sub", &sub, "--role", "boss"], &secret, "--role"),
        (vec!["--sub", "me", "--role", "admin"], &secret, "--sub"),
        (
            vec!["--sub", &sub, "--role", "admin", "--ttl", "soon"],
            &secret,
            "--ttl",
        ),
        (vec!["--sub", &sub, "--role", "admin"], &no_settings(), "JWT_SECRET"),
    ] {
        let args: Vec<&str> = ["token"].into_iter().chain(args.iter().copied()).collect();
        let (status, stderr) = run_to_exit("write-api", &args, env);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        let lines = one_line(&stderr);
        assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
        assert!(lines[0].contains(names), "{args:?}: {stderr}");
    }
}

fn mint(role: &str, sub: Uuid) -> String {
    let env = HashMap::from([("JWT_SECRET".to_owned(), SECRET.to_owned())]);
    let out = run_for_output("write-api", &["token", "--sub", &sub.to_string(), "--role", role], &env);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minted_token_is_accepted_by_a_running_write_api_with_its_role() {
    let db = TestDatabase::new().await;
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let service = ServiceProcess::spawn("write-api", &[], "WRITE_API_ADDR", &env);
    service.wait_ready_status(200, Duration::from_secs(60)).await;
    let product = json!({"sku": "cli-token", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
    let create = |token: String| {
        reqwest::Client::new()
            .post(service.url("/v1/products"))
            .bearer_auth(token)
            .json(&product)
            .send()
    };
    let admin = create(mint("admin", Uuid::now_v7())).await.expect("send");
    assert_eq!(admin.status(), 201, "{:?}", admin.text().await);
    // The role claim is what the token says: a customer may not create products.
    let customer = create(mint("customer", Uuid::now_v7())).await.expect("send");
    assert_eq!(customer.status(), 403);
}

/// The setting names a loader's source reads: its upper-case string literals, before the help
/// table that follows the loader and before its tests.
fn names_read_in(path: &str) -> Vec<String> {
    let source = std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    let loader = source.split("pub const HELP").next().unwrap_or_default();
    let loader = loader.split("#[cfg(test)]").next().unwrap_or_default();
    loader
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 2
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// `--help`'s settings are tables written next to each loader; this keeps them from missing
/// a setting the loader reads.
#[test]
fn help_lists_every_setting_its_binary_reads() {
    let platform = ["platform/src/telemetry.rs"];
    let auth = "platform/src/auth.rs";
    let amqp = "platform/src/amqp.rs";
    for (package, sources) in [
        ("write-api", vec!["write-api/src/settings.rs", auth]),
        (
            "outbox-relay",
            vec!["outbox-relay/src/settings.rs", "platform/src/http/admin.rs", amqp],
        ),
        ("read-api", vec!["read-api/src/settings.rs", auth, amqp]),
    ] {
        let out = run_for_output(package, &["--help"], &no_settings());
        let help = String::from_utf8_lossy(&out.stdout);
        let names: Vec<String> = sources.iter().chain(&platform).flat_map(|p| names_read_in(p)).collect();
        assert!(names.len() > 5, "{package}: found only {names:?}");
        for name in names {
            assert!(
                help.contains(&format!("  {name} ")),
                "{package} --help does not list {name}: {help}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_failure_exits_1_with_one_line_even_with_rust_backtrace() {
    let db = TestDatabase::new().await;
    // Migrated, so that the failure is the missing dead letter, not the missing schema.
    let names = outbox_relay::schema::TableNames::parse("outbox").unwrap();
    outbox_relay::schema::migrate(db.url(), &names, 16).await.unwrap();
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
        ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
        ("RUST_LOG".to_owned(), "off".to_owned()),
    ]);
    let (status, stderr) = run_to_exit("outbox-relay", &["dlq", "discard", "424242"], &env);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines = one_line(&stderr);
    assert_eq!(lines.len(), 1, "want one line, got {stderr:?}");
    assert!(lines[0].contains("424242"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_needs_nothing_but_the_database() {
    // No JWT_SECRET, no broker, no Redis: an operator migrating ahead of a deployment has only
    // the database's address (and rights).
    for (package, table) in [("write-api", "outbox"), ("read-api", "rv_products")] {
        let db = TestDatabase::empty().await;
        let env = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url().to_owned()),
            ("RUST_LOG".to_owned(), "off".to_owned()),
        ]);
        let (status, stderr) = run_to_exit(package, &["migrate"], &env);
        assert_eq!(status.code(), Some(0), "{package} migrate: {stderr}");
        let found = db
            .query_json(&format!("SELECT to_regclass('{table}') IS NOT NULL AS ok"))
            .await;
        assert_eq!(found[0]["ok"], true, "{package} migrate did not create {table}");
    }
}
