//! `read-api dlq list|show|replay|discard` against a running projector's dead-letter queue:
//! listing takes nothing away (however often), `show` prints one in full, `discard` drops one,
//! `replay` sends one back to be applied, and an unknown id is one line and status 1.

use std::collections::HashMap;

use ordering_tests::process::{run_for_output, run_to_exit};
use ordering_tests::read_app::{ReadApp, product, product_event};
use ordering_tests::relay::broker::AMQP_URL;

fn env(app: &ReadApp) -> HashMap<String, String> {
    HashMap::from([
        ("AMQP_URL".to_owned(), AMQP_URL.to_owned()),
        ("PROJECTOR_QUEUE".to_owned(), app.settings.queue.clone()),
        ("RUST_LOG".to_owned(), "off".to_owned()),
    ])
}

fn dlq(app: &ReadApp, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["dlq"];
    all.extend_from_slice(args);
    let out = run_for_output("read-api", &all, &env(app));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_lists_without_taking_shows_discards_and_replays() {
    let app = ReadApp::start().await;
    let (code, out, err) = dlq(&app, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("no dead letters in {}.dead", app.settings.queue));

    // Poison (not JSON) and a well-formed event PostgreSQL refuses (a NUL in a name): the
    // projector dead-letters both. A third never reached the views: put there by hand, as if
    // its cause had since been fixed.
    app.publish_raw("product.created", b"not json \x1b[31m").await;
    app.publish(&product_event(&product("NUL-1", "bad\u{0}name", "d", 100, 1)))
        .await;
    app.wait_for_dead_letters(2).await;
    let good = product("LATE-1", "Late", "d", 100, 3);
    app.publish_dead_letter(&serde_json::to_vec(&product_event(&good)).unwrap())
        .await;
    assert_eq!(app.dead_letter_count().await, 3);

    // A table, then NDJSON; listing many times takes nothing away.
    let (code, table, err) = dlq(&app, &["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ID ") && lines[0].contains("REASON"), "{table}");
    // Why each died: the parse error and the database's refusal, from the projector's header.
    assert!(table.contains("poison message: "), "{table}");
    assert!(table.contains("poison message: data holds a NUL character"), "{table}");
    assert!(
        !table.contains('\x1b'),
        "a control character reached the terminal: {table:?}"
    );
    // Ids hash the routing key a message came with: they stay the same however often the
    // messages are taken and put back.
    let ids = |json: &str| -> std::collections::BTreeSet<String> {
        json.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["id"].to_string())
            .collect()
    };
    let first = ids(&dlq(&app, &["list", "--json"]).1);
    for _ in 0..24 {
        assert_eq!(dlq(&app, &["list", "--json"]).0, 0);
    }
    assert_eq!(
        ids(&dlq(&app, &["list", "--json"]).1),
        first,
        "ids changed between listings"
    );
    assert_eq!(app.dead_letter_count().await, 3, "listing lost or added messages");
    let (_, json, _) = dlq(&app, &["list", "--json"]);
    let letters: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(letters.len(), 3, "{json}");
    let id_where = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        letters.iter().find(|l| pred(l)).expect("that dead letter")["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let poison = id_where(&|l| l["body"].as_str().is_some_and(|b| b.starts_with("not json")));
    let late = id_where(&|l| l["body"]["data"]["sku"] == "LATE-1");

    // One in full.
    let (code, shown, err) = dlq(&app, &["show", &late]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains(&format!("id:          {late}")), "{shown}");
    assert!(shown.contains("\"sku\": \"LATE-1\""), "{shown}");

    // Unknown ids: one line, status 1, nothing changed.
    for args in [
        &["show", "000000000000"][..],
        &["discard", "000000000000"],
        &["replay", "000000000000"],
    ] {
        let (status, stderr) = run_to_exit("read-api", &[&["dlq"][..], args].concat(), &env(&app));
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no dead letter with id 000000000000"), "{stderr}");
    }
    assert_eq!(app.dead_letter_count().await, 3);

    // Discard the poison; replay the late event, which the projector now applies.
    let (code, out, err) = dlq(&app, &["discard", &poison]);
    assert_eq!((code, out.trim()), (0, "discarded 1"), "{err}");
    let (code, out, err) = dlq(&app, &["replay", &late]);
    assert_eq!((code, out.trim()), (0, "replayed 1"), "{err}");
    app.wait_version("rv_products", good.id, 1).await;
    assert_eq!(app.dead_letter_count().await, 1, "the refused one stays");
}
