//! Property-based tests of what every service parses from another: the CloudEvents envelope
//! (serialise → parse gives back the same event, for any product or order state) and the
//! consistency token (encode → decode round trip; decoding never panics and never accepts
//! more than [`MAX_MARKS`] marks, whatever the string).

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use crate::consistency::{ConsistencyKey, ConsistencyToken, MAX_MARKS, TokenError, VersionMark};
use crate::events::{AggregateType, CloudEvent, EventKind, OrderData, OrderLineData, OrderStatus, ProductData};

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Instants from 1970 to 2200 at microsecond precision (what PostgreSQL stores).
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..7_258_118_400_000_000).prop_map(|us| DateTime::from_timestamp_micros(us).expect("in range"))
}

/// Any text, odd unicode included (RTL marks, combining characters, emoji, NUL, escapes).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\u{0}-\\u{7f}]{0,40}",
        "[\u{202e}\u{200f}\u{0301}\u{1F600}\u{FEFF}a\"\\\\/]{0,20}",
    ]
}

fn product_data() -> impl Strategy<Value = ProductData> {
    (
        uuid(),
        (text(), text(), text(), text()),
        (any::<i64>(), any::<i64>(), any::<i64>()),
        (instant(), instant()),
    )
        .prop_map(
            |(id, (sku, name, description, currency), (price_cents, stock, version), (created_at, updated_at))| {
                ProductData {
                    id,
                    sku,
                    name,
                    description,
                    price_cents,
                    currency,
                    stock,
                    version,
                    created_at,
                    updated_at,
                }
            },
        )
}

fn status() -> impl Strategy<Value = OrderStatus> {
    prop_oneof![
        Just(OrderStatus::Placed),
        Just(OrderStatus::Paid),
        Just(OrderStatus::Shipped),
        Just(OrderStatus::Cancelled),
    ]
}

fn line() -> impl Strategy<Value = OrderLineData> {
    (uuid(), text(), text(), any::<i64>(), any::<i64>(), any::<i64>()).prop_map(
        |(product_id, sku, name, unit_price_cents, quantity, line_total_cents)| OrderLineData {
            product_id,
            sku,
            name,
            unit_price_cents,
            quantity,
            line_total_cents,
        },
    )
}

fn order_data() -> impl Strategy<Value = OrderData> {
    (
        (uuid(), uuid(), status()),
        prop::collection::vec(line(), 0..8),
        (any::<i64>(), text(), any::<i64>()),
        (instant(), instant()),
    )
        .prop_map(
            |((id, customer_id, status), lines, (total_cents, currency, version), (created_at, updated_at))| {
                OrderData {
                    id,
                    customer_id,
                    status,
                    lines,
                    total_cents,
                    currency,
                    version,
                    created_at,
                    updated_at,
                }
            },
        )
}

fn kind() -> impl Strategy<Value = EventKind> {
    (0..EventKind::ALL.len()).prop_map(|i| EventKind::ALL[i])
}

fn key() -> ConsistencyKey {
    ConsistencyKey::new(b"proptest-secret")
}

fn mark() -> impl Strategy<Value = VersionMark> {
    (any::<bool>(), uuid(), 1..=i64::MAX).prop_map(|(p, id, version)| VersionMark {
        aggregate: if p {
            AggregateType::Product
        } else {
            AggregateType::Order
        },
        id,
        version,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn product_events_round_trip(data in product_data(), kind in kind(), seq in any::<i64>(), time in instant()) {
        let event = CloudEvent::new(kind, data.id, seq, time, data);
        let bytes = serde_json::to_vec(&event).expect("serialise");
        let back: CloudEvent<ProductData> = serde_json::from_slice(&bytes).expect("parse");
        prop_assert_eq!(back.kind(), Some(kind));
        prop_assert_eq!(&back, &event);
        // A consumer that reads the envelope generically sees the same fields.
        let generic: CloudEvent = serde_json::from_slice(&bytes).expect("parse as Value");
        prop_assert_eq!(generic.id, event.id);
        prop_assert_eq!(generic.sequence, seq);
        prop_assert_eq!(generic.subject, event.subject);
        prop_assert_eq!(serde_json::from_value::<ProductData>(generic.data).expect("data"), event.data);
    }

    #[test]
    fn order_events_round_trip(data in order_data(), kind in kind(), seq in any::<i64>(), time in instant()) {
        let event = CloudEvent::new(kind, data.id, seq, time, data);
        let text = serde_json::to_string(&event).expect("serialise");
        let back: CloudEvent<OrderData> = serde_json::from_str(&text).expect("parse");
        prop_assert_eq!(&back, &event);
        prop_assert_eq!(back.kind(), Some(kind));
    }

    #[test]
    fn arbitrary_json_never_panics_the_envelope_parser(s in any::<String>()) {
        let _ = serde_json::from_str::<CloudEvent<OrderData>>(&s);
        let _ = serde_json::from_str::<CloudEvent<ProductData>>(&s);
        let _ = serde_json::from_str::<CloudEvent>(&s);
    }

    #[test]
    fn consistency_tokens_round_trip(subject in uuid(), marks in prop::collection::vec(mark(), 1..=MAX_MARKS)) {
        let token = ConsistencyToken { subject, marks };
        let signed = key().sign(&token);
        prop_assert!(signed.is_ascii());
        prop_assert_eq!(key().verify(&signed), Ok(token));
    }

    #[test]
    fn consistency_token_verify_never_panics(s in any::<String>()) {
        if let Ok(t) = key().verify(&s) {
            prop_assert!(!t.marks.is_empty() && t.marks.len() <= MAX_MARKS);
            prop_assert!(t.marks.iter().all(|m| m.version >= 1));
        }
    }

    #[test]
    fn unsigned_prefixed_base64_is_refused(body in "[A-Za-z0-9_-]{0,3000}") {
        let s = format!("c2.{body}");
        prop_assert!(matches!(key().verify(&s), Err(TokenError::Malformed | TokenError::TooLarge)));
    }

    #[test]
    fn tokens_naming_too_many_aggregates_are_refused(extra in 1usize..50, m in mark()) {
        let token = ConsistencyToken { subject: m.id, marks: vec![m; MAX_MARKS + extra] };
        prop_assert_eq!(key().verify(&key().sign(&token)), Err(TokenError::TooLarge));
    }
}
