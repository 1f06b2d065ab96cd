//! The admin pages used as a person would. With a poison row dead-lettered, headless Chromium
//! opens the relay's `/admin`, signs in by pasting an admin token, sees the dead letter with
//! its error, and (once its cause is fixed) clicks Replay; the event then arrives on the
//! broker. On the read-api's `/admin` it sees a parked gap and a poison message, and discards
//! the message. Screenshots of both pages are left in `target/test-artifacts/admin-pages/`.

use std::time::Duration;

use ordering_tests::browser::{Browser, artifact_dir, wait_for};
use ordering_tests::read_app::{ReadApp, next_product, product, product_event};
use ordering_tests::relay::admin::PoisonedRelay;
use ordering_tests::relay::wait_until;
use ordering_tests::write_app::admin_token;

/// Opens an admin page, which shows the login form, and signs in by pasting an admin token
/// once (the cookie keeps the session).
async fn sign_in(client: &fantoccini::Client, page: &str) {
    client.goto(page).await.expect("open /admin");
    wait_for(client, "textarea[name=token]")
        .await
        .send_keys(&admin_token())
        .await
        .expect("paste the token");
    wait_for(client, "form[action='/admin/login'] button[type=submit]")
        .await
        .click()
        .await
        .expect("sign in");
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_admin_page_in_the_browser_replays_a_dead_letter_once_its_cause_is_fixed() {
    let mut p = PoisonedRelay::start(1).await;
    let letter = p.letters[0].clone();
    let dir = artifact_dir("admin-pages");
    let browser = Browser::start(&dir).await;
    let client = &browser.client;

    sign_in(client, &p.relay.url("/admin")).await;

    // The dead letter is listed with why it died and its payload.
    let row = format!("#dead-letter-{}", letter.outbox_id);
    let text = wait_for(client, &row).await.text().await.expect("row text");
    let shot = browser.screenshot(&dir, "relay-dead-letter").await;
    for shown in [letter.event_id.to_string().as_str(), "312 NO_ROUTE", "poison-1"] {
        assert!(
            text.contains(shown),
            "{shown} not in the row: {text}; see {}",
            shot.display()
        );
    }

    // Fix the cause (a queue now takes the routing key), then Replay from the page.
    let got = p.fix().await;
    wait_for(client, &format!("{row} form[action$='/replay'] button"))
        .await
        .click()
        .await
        .expect("click Replay");
    let notice = wait_for(client, ".notice").await.text().await.expect("notice");
    wait_for(client, "#no-dead-letters").await;
    browser.screenshot(&dir, "relay-replayed").await;
    assert!(notice.contains("replayed"), "{notice}");
    wait_until("the replayed event on the broker", Duration::from_secs(30), || async {
        got.event_ids().contains(&letter.event_id)
    })
    .await;
    assert!(p.dead_letters().is_empty());
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_api_admin_page_in_the_browser_shows_a_parked_gap_and_discards_a_dead_letter() {
    let app = ReadApp::start().await;
    let ahead = product("AHEAD-1", "Ahead", "d", 100, 1);
    app.publish(&product_event(&next_product(&ahead, |p| p.stock = 2)))
        .await;
    app.publish_raw("product.created", b"{\"not\": \"an event\"}").await;
    wait_until("the poison to be dead-lettered", Duration::from_secs(30), || async {
        app.dead_letter_count().await == 1
    })
    .await;
    // A worker parks the gap on its own: the page is loaded once, so it must be there first.
    wait_until("the gap to be parked", Duration::from_secs(30), || async {
        !app.query_json(&format!("SELECT 1 AS x FROM rv_parked WHERE id = '{}'", ahead.id))
            .await
            .is_empty()
    })
    .await;
    let dir = artifact_dir("admin-pages");
    let browser = Browser::start(&dir).await;
    let client = &browser.client;

    sign_in(client, &app.url("/admin")).await;

    // The gap (version 2 parked, version 1 missing) and the dead letter with why it died.
    let gap = wait_for(client, &format!("#gap-{}", ahead.id))
        .await
        .text()
        .await
        .expect("gap row");
    let letter = wait_for(client, "#dead-letter-list tr[id^=dead-letter-]")
        .await
        .text()
        .await
        .expect("dead letter row");
    let shot = browser.screenshot(&dir, "read-api-admin").await;
    assert!(
        gap.contains("version 0") && gap.contains("versions 2 to 2"),
        "{gap}; see {}",
        shot.display()
    );
    assert!(letter.contains("poison message: "), "{letter}; see {}", shot.display());

    wait_for(client, "#dead-letter-list form[action$='/discard'] button")
        .await
        .click()
        .await
        .expect("click Discard");
    let notice = wait_for(client, ".notice").await.text().await.expect("notice");
    wait_for(client, "#no-dead-letters").await;
    browser.screenshot(&dir, "read-api-discarded").await;
    assert!(notice.contains("discarded"), "{notice}");
    assert_eq!(app.dead_letter_count().await, 0);
    browser.close().await;
}
