//! Requests hyper refuses while parsing them, before any of our code runs: 414 for a request
//! target over 64 KiB, 431 for more than 100 headers, 400 for obsolete line folding. hyper 1
//! writes these answers itself, with an empty body and no hook to shape it (README, "Errors",
//! documents it). This pins that behaviour, so a hyper upgrade that offers a hook is noticed,
//! and checks that each refusal leaves the server serving.

use std::net::SocketAddr;
use std::time::Duration;

use ordering_platform::auth::Authenticator;
use ordering_platform::http::layers::HttpLimits;
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::SECRET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a fresh connection and reads the answer until the server closes it.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything: ignore a reset.
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn hyper_answers_malformed_heads_itself_with_an_empty_body_and_keeps_serving() {
    let db = TestDatabase::new().await;
    let limits = HttpLimits::default();
    let state = write_api::AppState::new(
        db.url(),
        2,
        Authenticator::hs256(SECRET.as_bytes()),
        ordering_tests::write_app::consistency_key(),
        &limits,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(ordering_platform::http::serve(
        listener,
        write_api::router(state, limits),
        std::future::pending(),
    ));
    let long_uri = format!("GET /v1/products/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let many_headers = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..101).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
    );
    let folded = "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n";
    for (what, request, status) in [
        ("URI over 64 KiB", long_uri.as_str(), "414"),
        ("101 headers", many_headers.as_str(), "431"),
        ("obsolete line folding", folded, "400"),
    ] {
        let answer = raw(addr, request.as_bytes()).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{what}: {answer:?}");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
        assert!(body.is_empty(), "{what}: hyper gave a body now: {answer:?}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 0"),
            "{what}: {head}"
        );
        let live = raw(
            addr,
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(live.starts_with("HTTP/1.1 200"), "after {what}: {live:?}");
    }
    server.abort();
}
