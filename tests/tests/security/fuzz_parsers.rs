//! Fuzz targets (proptest-driven, bounded case counts) for every parser of untrusted input:
//! request bodies, bearer tokens, `If-Match`, `Idempotency-Key`, read-api query strings and
//! cursors, consistency tokens, announcement payloads. Each must never panic, and must accept
//! only what it should: a body decodes or is a 422 naming a field; a token is 401 unless it is
//! a valid HS256 token; a cursor is refused unless we signed it for that very query.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ordering_platform::auth::{Authenticator, Role};
use ordering_platform::http::json::decode;
use ordering_schema::consistency::MAX_MARKS;
use ordering_tests::write_app::{SECRET, consistency_key, token_with};
use proptest::prelude::*;
use read_api::cursor::Cursors;
use read_api::views::ProductKey;
use serde_json::{Value, json};
use uuid::Uuid;
use write_api::commands::adjust_stock::AdjustStockRequest;
use write_api::commands::cancel_order::CancelOrderRequest;
use write_api::commands::create_product::CreateProductRequest;
use write_api::commands::pay_order::PayOrderRequest;
use write_api::commands::place_order::PlaceOrderRequest;
use write_api::commands::ship_order::ShipOrderRequest;
use write_api::commands::update_product::UpdateProductRequest;
use write_api::http::meta::{IfMatch, parse_idempotency_key};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON: scalars of every kind (huge and negative numbers, odd strings) nested
/// into arrays and objects, with keys that are sometimes the request types' own field names.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "sku",
            "name",
            "description",
            "price_cents",
            "currency",
            "stock",
            "delta",
            "reason",
            "customer_id",
            "lines",
            "product_id",
            "quantity",
            "payment_reference",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
        Just(json!(Uuid::now_v7())),
        Just(json!("EUR")),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check_decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), TestCaseError> {
    if let Err(p) = decode::<T>(v) {
        prop_assert_eq!((p.status, p.code.as_str()), (422, "validation_failed"));
        prop_assert!(!p.errors.is_empty(), "a 422 names the field");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2000))]

    /// Every request type: arbitrary JSON decodes or is a 422 naming a field; never a panic.
    #[test]
    fn json_bodies_decode_or_are_422(v in json_value()) {
        check_decode::<CreateProductRequest>(&v)?;
        check_decode::<UpdateProductRequest>(&v)?;
        check_decode::<AdjustStockRequest>(&v)?;
        check_decode::<PlaceOrderRequest>(&v)?;
        check_decode::<PayOrderRequest>(&v)?;
        check_decode::<ShipOrderRequest>(&v)?;
        check_decode::<CancelOrderRequest>(&v)?;
    }

    /// Objects shaped like real bodies, with one field replaced by anything.
    #[test]
    fn near_valid_bodies_decode_or_are_422(field in 0usize..6, v in json_value()) {
        let mut product = json!({"sku": "S", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1, "description": "d"});
        let key = ["sku", "name", "price_cents", "currency", "stock", "description"][field];
        product[key] = v.clone();
        check_decode::<CreateProductRequest>(&product)?;
        check_decode::<UpdateProductRequest>(&json!({ key: v.clone() }))?;
        let order = json!({"customer_id": Uuid::now_v7(), "lines": [{"product_id": Uuid::now_v7(), "quantity": v.clone()}]});
        check_decode::<PlaceOrderRequest>(&order)?;
        check_decode::<PlaceOrderRequest>(&json!({"lines": v.clone()}))?;
        check_decode::<AdjustStockRequest>(&json!({"delta": v.clone(), "reason": "r"}))?;
        check_decode::<PayOrderRequest>(&json!({"payment_reference": v}))?;
    }

    /// Arbitrary bytes as a body never panic the JSON parser.
    #[test]
    fn arbitrary_bytes_never_panic_the_json_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            check_decode::<PlaceOrderRequest>(&v)?;
        }
    }
}

fn authenticator() -> Authenticator {
    Authenticator::hs256(SECRET.as_bytes())
}

/// A JWT-shaped string: three base64url parts from arbitrary JSON/bytes, maybe signed with
/// our secret under another algorithm's header.
fn jwt_like() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        Just(r#"{"alg":"none","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"HS384"}"#.to_owned()),
        Just(r#"{"alg":"RS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"ES256"}"#.to_owned()),
        Just(r#"{"alg":"HS256","crit":["x"]}"#.to_owned()),
        any::<String>(),
    ];
    let claims = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        (any::<i64>(), "[a-z]{0,8}")
            .prop_map(|(exp, role)| json!({"sub": Uuid::now_v7(), "role": role, "exp": exp}).to_string()),
    ];
    let sig = prop::collection::vec(any::<u8>(), 0..48);
    (header, claims, sig).prop_map(|(h, c, s)| {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(c),
            URL_SAFE_NO_PAD.encode(s)
        )
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any Authorization header value (any bytes): 401 unauthorized, never a panic.
    #[test]
    fn arbitrary_authorization_bytes_are_401(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let p = authenticator().authenticate(Some(&bytes)).expect_err("random bytes are not a token");
        prop_assert_eq!((p.status, p.code.as_str()), (401, "unauthorized"));
    }

    /// Any string behind `Bearer `: 401 unauthorized.
    #[test]
    fn arbitrary_bearer_strings_are_401(s in any::<String>()) {
        let header = format!("Bearer {s}");
        let p = authenticator().authenticate(Some(header.as_bytes())).expect_err("not a token");
        prop_assert_eq!(p.status, 401);
    }

    /// JWT-shaped forgeries (alg none/HS384/RS256 headers, arbitrary claims, random
    /// signatures): always 401.
    #[test]
    fn forged_jwts_are_401(t in jwt_like()) {
        let header = format!("Bearer {t}");
        let p = authenticator().authenticate(Some(header.as_bytes())).expect_err("forged token accepted");
        prop_assert_eq!((p.status, p.code.as_str()), (401, "unauthorized"));
    }

    /// Flipping any one character of a valid token makes it invalid (or leaves it equal in
    /// meaning, for base64's unused trailing bits — then it must still name the same caller).
    #[test]
    fn a_valid_token_with_one_character_changed_is_refused(pos in any::<prop::sample::Index>(), c in "[A-Za-z0-9_.-]") {
        let sub = Uuid::now_v7();
        let t = token_with(&sub.to_string(), "customer", 600, SECRET);
        let i = pos.index(t.len());
        let mut bytes = t.clone().into_bytes();
        bytes[i] = c.as_bytes()[0];
        let forged = String::from_utf8(bytes).expect("ascii");
        let header = format!("Bearer {forged}");
        match authenticator().authenticate(Some(header.as_bytes())) {
            Err(p) => prop_assert_eq!(p.status, 401),
            Ok(caller) => {
                prop_assert_eq!(caller.subject, sub);
                prop_assert_eq!(caller.role, Role::Customer);
            }
        }
    }

    #[test]
    fn if_match_parses_only_its_forms(s in any::<String>()) {
        if let Some(m) = IfMatch::parse(&s) {
            let t = s.trim();
            match m {
                IfMatch::Any => prop_assert_eq!(t, "*"),
                IfMatch::Version(v) => {
                    prop_assert!(v >= 0);
                    let tag = t.strip_prefix("W/").unwrap_or(t);
                    prop_assert_eq!(tag, format!("\"{}\"", tag.trim_matches('"')));
                }
            }
        }
    }

    #[test]
    fn if_match_round_trips_versions(v in 0i64..=i64::MAX, weak in any::<bool>()) {
        let s = if weak { format!("W/\"{v}\"") } else { format!("\"{v}\"") };
        prop_assert_eq!(IfMatch::parse(&s), Some(IfMatch::Version(v)));
    }

    #[test]
    fn idempotency_keys_are_1_to_255_visible_ascii(s in any::<String>()) {
        let ok = parse_idempotency_key(&s).is_some();
        let rule = !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
        prop_assert_eq!(ok, rule);
    }

    #[test]
    fn consistency_tokens_never_panic_and_stay_bounded(s in prop_oneof![any::<String>(), "c2\\.[A-Za-z0-9_-]{0,3500}"]) {
        if let Ok(t) = consistency_key().verify(&s) {
            prop_assert!(!t.marks.is_empty() && t.marks.len() <= MAX_MARKS);
        }
    }

    #[test]
    fn announcements_never_panic(s in any::<String>()) {
        let _ = read_api::announcement::parse_all(&s).count();
    }

    #[test]
    fn read_api_query_strings_never_panic(s in any::<String>()) {
        let allowed = ["search", "min_price", "max_price", "in_stock", "sort", "limit", "cursor"];
        if let Ok(q) = read_api::http::query_params(Some(&s), &allowed) {
            prop_assert!(q.keys().all(|k| allowed.contains(&k.as_str())));
            prop_assert!(q.values().all(|v| !v.contains('\0')));
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary strings are never accepted as cursors.
    #[test]
    fn arbitrary_cursors_are_refused(s in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,400}"]) {
        let c = Cursors::new(SECRET.as_bytes());
        prop_assert!(c.decode::<(ProductKey, Uuid)>(&s, "products|Name||None|None|None").is_none());
        prop_assert!(c.decode::<(i64, Uuid)>(&s, "orders|x|None").is_none());
        prop_assert!(c.decode::<Value>(&s, "").is_none());
    }

    /// A payload of our own shape under a forged MAC is refused.
    #[test]
    fn cursors_with_a_forged_mac_are_refused(mac in prop::collection::vec(any::<u8>(), 16), micros in any::<i64>()) {
        let mut bytes = mac;
        bytes.extend_from_slice(&serde_json::to_vec(&(micros, Uuid::now_v7())).expect("json"));
        let forged = URL_SAFE_NO_PAD.encode(bytes);
        prop_assert!(Cursors::new(SECRET.as_bytes()).decode::<(i64, Uuid)>(&forged, "orders|x|None").is_none());
    }

    /// A real cursor is good only for the query (scope) and secret it was issued with, and any
    /// one-character change to it is refused.
    #[test]
    fn real_cursors_bind_to_their_scope(
        micros in any::<i64>(),
        scope in "[a-z|0-9]{0,30}",
        other in "[a-z|0-9]{0,30}",
        pos in any::<prop::sample::Index>(),
        c in "[A-Za-z0-9_-]",
    ) {
        let cursors = Cursors::new(SECRET.as_bytes());
        let key = (micros, Uuid::now_v7());
        let s = cursors.encode(&key, &scope);
        prop_assert_eq!(cursors.decode::<(i64, Uuid)>(&s, &scope), Some(key));
        if other != scope {
            prop_assert!(cursors.decode::<(i64, Uuid)>(&s, &other).is_none());
        }
        prop_assert!(Cursors::new(b"another-secret-0123456789").decode::<(i64, Uuid)>(&s, &scope).is_none());
        let i = pos.index(s.len());
        let mut bytes = s.clone().into_bytes();
        bytes[i] = c.as_bytes()[0];
        let changed = String::from_utf8(bytes).expect("ascii");
        if changed != s {
            // The last character may carry unused bits: then it decodes to the same bytes.
            let decoded = cursors.decode::<(i64, Uuid)>(&changed, &scope);
            prop_assert!(decoded.is_none() || decoded == Some(key));
        }
    }
}
