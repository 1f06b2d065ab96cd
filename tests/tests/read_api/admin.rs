//! The read-api's admin page over HTTP: only a signed-in admin sees it (as on the relay); it
//! shows the projector's queue, the parked events and their gap, the dead letters with why they
//! died, and the cache's hit ratio; Replay and Discard need the session's CSRF token and do
//! what `read-api dlq` does. The page in a browser is in tests/tests/e2e/admin_pages.rs.

use std::time::Duration;

use ordering_tests::admin_page::{client, csrf_of, login, session_cookie};
use ordering_tests::read_app::{ReadApp, ReadOptions, next_product, product, product_event};
use ordering_tests::write_app::{admin_token, answer, customer_token};

async fn page(app: &ReadApp, cookie: Option<&str>) -> (u16, String) {
    let mut req = client().get(app.url("/admin"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.expect("GET /admin");
    (res.status().as_u16(), res.text().await.expect("body"))
}

/// The page once `ready` holds of it (the projector works in the background).
async fn page_when(app: &ReadApp, cookie: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..200 {
        let (status, body) = page(app, Some(cookie)).await;
        assert_eq!(status, 200, "{body}");
        if ready(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the admin page never showed {what}");
}

/// The ids of the dead letters listed on `html`, each with its row's HTML.
fn listed(html: &str) -> Vec<(String, String)> {
    html.split(r#"<tr id="dead-letter-"#)
        .skip(1)
        .map(|row| (row[..12].to_owned(), row.split("</tr>").next().unwrap_or("").to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_admin_sees_the_queue_the_parked_gap_the_dead_letters_and_the_hit_ratio() {
    let app = ReadApp::start().await;
    // A product applied (the projector caches it) and read twice: hits. One never seen: a miss.
    let shown = product("SHOWN-1", "Shown", "d", 100, 1);
    app.publish(&product_event(&shown)).await;
    app.wait_version("rv_products", shown.id, 1).await;
    for _ in 0..2 {
        assert_eq!(answer(app.get(&format!("/v1/products/{}", shown.id))).await.status, 200);
    }
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(answer(app.get(&format!("/v1/products/{unknown}"))).await.status, 404);
    // An event from the future: version 3 of a product the views never saw is parked.
    let ahead = product("AHEAD-1", "Ahead", "d", 100, 1);
    let v3 = next_product(&next_product(&ahead, |_| {}), |p| p.stock = 7);
    app.publish(&product_event(&v3)).await;
    // Poison: not JSON, dead-lettered by the projector.
    app.publish_raw("product.created", b"not json <b>at all</b>").await;
    app.wait_for_dead_letters(1).await;

    // Nobody signed in, a bad cookie, a customer: the page's content is never shown.
    for cookie in [None, Some("ordering_admin=garbage")] {
        let (status, body) = page(&app, cookie).await;
        assert_eq!(status, 401, "{cookie:?}");
        assert!(body.contains(r#"action="/admin/login""#), "{body}");
        assert!(!body.contains("dead-letter-"), "{body}");
    }
    let customer = customer_token(uuid::Uuid::now_v7());
    assert_eq!(login(&app.url(""), &customer).await.status(), 403);
    let (status, body) = page(&app, Some(&format!("ordering_admin={customer}"))).await;
    assert_eq!(status, 403);
    assert!(!body.contains("dead-letter-"), "{body}");

    let cookie = session_cookie(&login(&app.url(""), &admin_token()).await);
    let body = page_when(&app, &cookie, "the parked event", |b| {
        b.contains(r#"<td id="parked">1</td>"#)
    })
    .await;
    let stats = app.state().cache.stats();
    assert!(
        stats.local_hits + stats.redis_hits >= 1 && stats.misses >= 1,
        "{stats:?}"
    );
    let ratio = format!(
        r#"<td id="hit-ratio">{:.1}%</td>"#,
        stats.hit_ratio().expect("lookups") * 100.0
    );
    for part in [
        app.settings.queue.clone(),
        r#"<td id="queue-depth">0</td>"#.to_owned(),
        r#"<td id="queue-consumers">1</td>"#.to_owned(),
        r#"<span class="ok">projecting</span>"#.to_owned(),
        r#"<td id="gaps">1</td>"#.to_owned(),
        format!(r#"<tr id="gap-{}">"#, ahead.id),
        "versions 3 to 3".to_owned(),
        r#"<span id="dead-letters">1</span>"#.to_owned(),
        "poison message: ".to_owned(),
        // The body is shown escaped.
        "not json &lt;b&gt;at all&lt;/b&gt;".to_owned(),
        ratio,
        format!(r#"<td id="misses">{}</td>"#, stats.misses),
    ] {
        assert!(body.contains(&part), "the page lacks {part}: {body}");
    }
    assert_eq!(listed(&body).len(), 1, "{body}");
    for external in ["<script", "<link", "<img", "src="] {
        assert!(!body.contains(external), "{external} in {body}");
    }
    // Looking took nothing away, however often.
    for _ in 0..5 {
        page(&app, Some(&cookie)).await;
    }
    assert_eq!(app.dead_letter_count().await, 1);

    // The missing versions arrive: the gap closes and the page says so.
    app.publish(&product_event(&ahead)).await;
    app.publish(&product_event(&next_product(&ahead, |_| {}))).await;
    app.wait_version("rv_products", ahead.id, 3).await;
    page_when(&app, &cookie, "no gap", |b| b.contains(r#"id="no-gaps""#)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_and_discard_from_the_page_need_the_sessions_csrf_token_and_do_what_the_cli_does() {
    let app = ReadApp::start().await;
    app.publish_raw("product.created", b"poison").await;
    app.wait_for_dead_letters(1).await;
    // An event that never reached the views, in the dead letters as if its cause were fixed.
    let late = product("LATE-1", "Late", "d", 100, 3);
    app.publish_dead_letter(&serde_json::to_vec(&product_event(&late)).unwrap())
        .await;
    let cookie = session_cookie(&login(&app.url(""), &admin_token()).await);
    let (status, body) = page(&app, Some(&cookie)).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&body);
    let rows = listed(&body);
    assert_eq!(rows.len(), 2, "{body}");
    let id_of = |needle: &str| {
        rows.iter()
            .find(|(_, row)| row.contains(needle))
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("no dead letter with {needle}: {body}"))
    };
    let (late_id, poison_id) = (id_of("LATE-1"), id_of("poison"));

    let post = |action: &str, id: &str, csrf: Option<&str>, origin: Option<&str>| {
        let mut req = client()
            .post(app.url(&format!("/admin/dead-letters/{id}/{action}")))
            .header("cookie", &cookie);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let form: Vec<(&str, &str)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
        req.form(&form).send()
    };
    for (what, token, origin) in [
        ("no CSRF token", None, None),
        ("a wrong CSRF token", Some("00ff"), None),
        ("another origin", Some(csrf.as_str()), Some("http://evil.example")),
    ] {
        let res = post("discard", &poison_id, token, origin).await.unwrap();
        assert_eq!(res.status(), 403, "{what}");
    }
    assert_eq!(app.dead_letter_count().await, 2, "a refused request changed something");

    // Replay: the event goes to the projector and is applied.
    let own_origin = app.url("");
    let res = post("replay", &late_id, Some(&csrf), Some(&own_origin)).await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], format!("/admin?replayed={late_id}"));
    app.wait_version("rv_products", late.id, 1).await;
    // Discard: gone for good.
    let res = post("discard", &poison_id, Some(&csrf), None).await.unwrap();
    assert_eq!(res.headers()["location"], format!("/admin?discarded={poison_id}"));
    assert_eq!(app.dead_letter_count().await, 0);
    // Again, or an id that is not one: nothing to do, and the page says so.
    let res = post("replay", &late_id, Some(&csrf), None).await.unwrap();
    assert_eq!(res.headers()["location"], format!("/admin?missing={late_id}"));
    let res = post("discard", "not-an-id%0d%0a", Some(&csrf), None).await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/admin?missing=");
    let (_, body) = page(&app, Some(&cookie)).await;
    assert!(body.contains(r#"id="no-dead-letters""#), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_jwt_secret_the_read_apis_page_is_off_and_says_how_to_turn_it_on() {
    let app = ReadApp::start_with(ReadOptions {
        admin: false,
        ..ReadOptions::default()
    })
    .await;
    for (method, path) in [("GET", "/admin"), ("POST", "/admin/dead-letters/0123456789ab/discard")] {
        let res = client()
            .request(method.parse().unwrap(), app.url(path))
            .header("cookie", format!("ordering_admin={}", admin_token()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{method} {path}");
        assert!(res.text().await.unwrap().contains("JWT_SECRET"));
    }
}
