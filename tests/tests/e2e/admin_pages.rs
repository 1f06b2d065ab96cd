//! The admin pages used as a person would: with a poison row dead-lettered, headless Chromium
//! opens the relay's `/admin`, signs in by pasting an admin token, sees the dead letter with
//! its error, and (once its cause is fixed) clicks Replay; the event then arrives on the
//! broker. Screenshots are left in `target/test-artifacts/admin-pages/`.

use std::time::Duration;

use ordering_tests::browser::{Browser, artifact_dir, wait_for};
use ordering_tests::relay::admin::PoisonedRelay;
use ordering_tests::relay::wait_until;
use ordering_tests::write_app::admin_token;

#[tokio::test(flavor = "multi_thread")]
async fn relay_admin_page_in_the_browser_replays_a_dead_letter_once_its_cause_is_fixed() {
    let mut p = PoisonedRelay::start(1).await;
    let letter = p.letters[0].clone();
    let dir = artifact_dir("admin-pages");
    let browser = Browser::start(&dir).await;
    let client = &browser.client;

    // Not signed in: the login form. The token is pasted once; the cookie keeps the session.
    client.goto(&p.relay.url("/admin")).await.expect("open /admin");
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
