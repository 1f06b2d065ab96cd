//! The relay's admin page over HTTP: who may see it (an admin token in an `HttpOnly`,
//! `SameSite=Strict` cookie; 401 otherwise, 403 for a customer), that Replay and Discard need
//! the session's CSRF token and a same-origin form, and that they do what the CLI does. The
//! same page driven by a browser is in tests/tests/e2e/admin_pages.rs.

use std::time::Duration;

use ordering_tests::admin_page::{client, csrf_of, login, session_cookie};
use ordering_tests::relay::admin::PoisonedRelay;
use ordering_tests::relay::broker::TestExchange;
use ordering_tests::relay::outbox::unsent;
use ordering_tests::relay::process::{RelayEnv, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::{SECRET, admin_token, customer_token, token_with};

const WAIT: Duration = Duration::from_secs(30);

async fn get_admin(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = client().get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.expect("GET /admin");
    (res.status().as_u16(), res.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_signed_in_admin_sees_the_page() {
    let p = PoisonedRelay::start(1).await;
    let page = p.relay.url("/admin");

    // Nobody signed in, or a cookie that is not a valid token: 401 with the login form.
    for cookie in [None, Some("ordering_admin=garbage"), Some("other=1")] {
        let (status, body) = get_admin(&page, cookie).await;
        assert_eq!(status, 401, "{cookie:?}");
        assert!(body.contains(r#"action="/admin/login""#), "{body}");
        assert!(!body.contains("poison-"), "{body}");
    }
    let foreign = token_with(
        &uuid::Uuid::now_v7().to_string(),
        "admin",
        600,
        "another-secret-0123456789",
    );
    let expired = token_with(&uuid::Uuid::now_v7().to_string(), "admin", -600, SECRET);
    for bad in ["garbage", "a\"b", "", &foreign, &expired] {
        let res = login(&p.relay.url(""), bad).await;
        assert_eq!(res.status(), 401, "{bad}");
        assert!(res.headers().get("set-cookie").is_none());
    }
    // A customer's token is valid but not enough: 403, at login and as a cookie.
    let customer = customer_token(uuid::Uuid::now_v7());
    assert_eq!(login(&p.relay.url(""), &customer).await.status(), 403);
    let (status, body) = get_admin(&page, Some(&format!("ordering_admin={customer}"))).await;
    assert_eq!(status, 403);
    assert!(!body.contains("poison-"), "{body}");

    // An admin's token: a cookie the page's scripts cannot read and other sites cannot send.
    let res = login(&p.relay.url(""), &admin_token()).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/admin");
    let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing from {set}");
    }
    let cookie = session_cookie(&res);
    let res = client().get(&page).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let body = res.text().await.unwrap();
    let letter = &p.letters[0];
    for shown in [
        format!(r#"id="dead-letter-{}""#, letter.outbox_id),
        letter.event_id.to_string(),
        // The last error: the broker returned it.
        "312 NO_ROUTE".into(),
        // The payload, pretty-printed and escaped.
        "&quot;subject&quot;: &quot;poison-1&quot;".into(),
        "Breaker postgres".into(),
        "Breaker rabbitmq".into(),
        "(this instance)".into(),
        r#"<td id="dead-letters">1</td>"#.into(),
        r#"<td id="pending">1</td>"#.into(),
    ] {
        assert!(body.contains(&shown), "the page lacks {shown}: {body}");
    }
    // No external asset: no script, no stylesheet link, no image.
    for external in ["<script", "<link", "<img", "src="] {
        assert!(!body.contains(external), "{external} in {body}");
    }

    // Signing out needs the CSRF token too, and clears the cookie.
    let res = client()
        .post(p.relay.url("/admin/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf_of(&body))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(res.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_and_discard_need_the_sessions_csrf_token_and_do_what_the_cli_does() {
    let mut p = PoisonedRelay::start(2).await;
    let (replayed, discarded) = (p.letters[0].clone(), p.letters[1].clone());
    let cookie = session_cookie(&login(&p.relay.url(""), &admin_token()).await);
    let (status, body) = get_admin(&p.relay.url("/admin"), Some(&cookie)).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&body);
    // Another session's token (another login) is not this session's.
    let (_, other) = get_admin(
        &p.relay.url("/admin"),
        Some(&session_cookie(&login(&p.relay.url(""), &admin_token()).await)),
    )
    .await;
    let other_csrf = csrf_of(&other);
    assert_ne!(csrf, other_csrf);

    let replay_url = p
        .relay
        .url(&format!("/admin/dead-letters/{}/replay", replayed.outbox_id));
    let post = |url: &str, cookie: Option<&str>, origin: Option<&str>, csrf: Option<&str>| {
        let mut req = client().post(url);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let form: Vec<(&str, &str)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
        req.form(&form).send()
    };
    let own_origin = format!("http://{}", p.relay.addr);
    for (what, cookie, origin, token, status) in [
        ("no session", None, None, Some(csrf.as_str()), 401),
        ("no CSRF token", Some(cookie.as_str()), None, None, 403),
        ("a wrong CSRF token", Some(cookie.as_str()), None, Some("00ff"), 403),
        ("not hex", Some(cookie.as_str()), None, Some("zz"), 403),
        (
            "another session's token",
            Some(cookie.as_str()),
            None,
            Some(other_csrf.as_str()),
            403,
        ),
        (
            "another origin",
            Some(cookie.as_str()),
            Some("http://evil.example"),
            Some(csrf.as_str()),
            403,
        ),
    ] {
        let res = post(&replay_url, cookie, origin, token).await.unwrap();
        assert_eq!(res.status(), status, "{what}");
    }
    assert_eq!(p.dead_letters().len(), 2, "a refused request changed something");

    // The cause fixed (a queue takes the events now), Replay publishes the event.
    let got = p.fix().await;
    let res = post(&replay_url, Some(&cookie), Some(&own_origin), Some(&csrf))
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        format!("/admin?replayed={}", replayed.outbox_id)
    );
    wait_until("the replayed event on the broker", WAIT, || async {
        got.event_ids().contains(&replayed.event_id)
    })
    .await;
    // Discard: never published, recorded as sent.
    let res = post(
        &p.relay
            .url(&format!("/admin/dead-letters/{}/discard", discarded.outbox_id)),
        Some(&cookie),
        None,
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 303);
    wait_until("every row to be marked sent", WAIT, || async {
        unsent(&mut p.db.conn().await, "outbox").await == 0
    })
    .await;
    assert!(p.dead_letters().is_empty());
    assert!(
        !got.event_ids().contains(&discarded.event_id),
        "a discarded event was published"
    );
    // Again: nothing left to replay.
    let res = post(&replay_url, Some(&cookie), None, Some(&csrf)).await.unwrap();
    assert_eq!(
        res.headers()["location"],
        format!("/admin?missing={}", replayed.outbox_id)
    );
    let (_, body) = get_admin(&p.relay.url("/admin"), Some(&cookie)).await;
    assert!(body.contains(r#"id="no-dead-letters""#), "{body}");
    // The replayed event's confirm shows in this instance's rate and latency.
    assert!(body.contains(r#"<td id="latency">p50 "#), "{body}");
    assert!(!body.contains(r#"<td id="rate">0.00 "#), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_jwt_secret_the_page_is_off_and_says_how_to_turn_it_on() {
    let db = TestDatabase::new().await;
    let exchange = TestExchange::new().await;
    let relay = spawn_relay(&RelayEnv::new(db.url(), &exchange.name));
    relay.wait_ready_status(200, WAIT).await;
    for (method, path) in [
        ("GET", "/admin"),
        ("POST", "/admin/login"),
        ("POST", "/admin/dead-letters/1/replay"),
    ] {
        let res = client()
            .request(method.parse().unwrap(), relay.url(path))
            .header("cookie", format!("ordering_admin={}", admin_token()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{method} {path}");
        assert!(res.text().await.unwrap().contains("JWT_SECRET"));
    }
}
