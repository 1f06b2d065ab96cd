//! `GET /v1/products?search=`: terms match case-insensitively by full Unicode case folding,
//! in any script.

use ordering_tests::read_app::{ReadApp, product, product_event};
use ordering_tests::write_app::answer;

/// `term` with every byte but unreserved ASCII percent-encoded.
fn percent_encoded(term: &str) -> String {
    term.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_folds_case_in_any_script() {
    let app = ReadApp::start().await;
    let greek = product("GR-1", "ΟΔΟΣ sign", "street", 100, 1);
    let turkish = product("TR-1", "İstanbul rug", "woven", 100, 1);
    let german = product("DE-1", "Straße map", "paper", 100, 1);
    let ascii = product("KET-1", "Steel kettle", "boils water", 100, 1);
    let cafe = product("FR-1", "Café table", "round", 100, 1);
    for p in [&greek, &turkish, &german, &ascii, &cafe] {
        app.publish(&product_event(p)).await;
        app.wait_version("rv_products", p.id, 1).await;
    }
    let search = |term: &'static str| {
        let req = app.get(&format!("/v1/products?search={}", percent_encoded(term)));
        async move {
            let a = answer(req).await;
            assert_eq!(a.status, 200, "{}", a.text);
            let mut skus: Vec<String> = a.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["sku"].as_str().unwrap().to_owned())
                .collect();
            skus.sort();
            skus
        }
    };
    for (term, expected) in [
        // Final sigma and capital sigma fold alike.
        ("οδοσ", vec!["GR-1"]),
        ("οδος", vec!["GR-1"]),
        ("ΟΔΟΣ", vec!["GR-1"]),
        // The capital I with a dot matches a plain i, and the other way round.
        ("istanbul", vec!["TR-1"]),
        ("İSTANBUL", vec!["TR-1"]),
        // ß folds to ss.
        ("STRASSE", vec!["DE-1"]),
        ("straße", vec!["DE-1"]),
        ("KETTLE", vec!["KET-1"]),
        ("kettle steel", vec!["KET-1"]),
        ("ket-1", vec!["KET-1"]),
        // Accents stay significant, in either normal form.
        ("CAFÉ", vec!["FR-1"]),
        ("cafe\u{301}", vec!["FR-1"]),
        ("cafe", vec![]),
    ] {
        assert_eq!(search(term).await, expected, "search {term:?}");
    }
}
