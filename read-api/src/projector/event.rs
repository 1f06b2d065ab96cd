//! Message bodies: what the projector can apply, what it does not know, what is poison.

use chrono::{DateTime, Utc};
use ordering_schema::events::{AggregateType, CloudEvent, OrderData, ProductData};
use uuid::Uuid;

/// A parsed event the views know how to apply.
#[derive(Clone, Debug)]
pub enum Event {
    Product {
        data: ProductData,
        sequence: i64,
        time: DateTime<Utc>,
    },
    Order {
        data: OrderData,
        sequence: i64,
        time: DateTime<Utc>,
    },
}

impl Event {
    /// The aggregate this event changes.
    pub fn key(&self) -> (AggregateType, Uuid) {
        match self {
            Self::Product { data, .. } => (AggregateType::Product, data.id),
            Self::Order { data, .. } => (AggregateType::Order, data.id),
        }
    }

    /// What decides the worker an event goes to: the product, or the order's customer (so all
    /// of a customer's order events, which bump that customer's revision, go to one worker
    /// and two workers never wait on each other's customer rows). Either way, all events of
    /// one aggregate go to one worker.
    pub(super) fn route(&self) -> (AggregateType, Uuid) {
        match self {
            Self::Product { data, .. } => (AggregateType::Product, data.id),
            Self::Order { data, .. } => (AggregateType::Order, data.customer_id),
        }
    }

    /// The aggregate's version after the event.
    pub fn sequence(&self) -> i64 {
        match self {
            Self::Product { sequence, .. } | Self::Order { sequence, .. } => *sequence,
        }
    }

    pub(super) fn time(&self) -> DateTime<Utc> {
        match self {
            Self::Product { time, .. } | Self::Order { time, .. } => *time,
        }
    }
}

/// What a message body turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Event(Box<Event>),
    /// A well-formed event of a type or aggregate this version does not know.
    Unknown(String),
}

/// Why a message can never be applied.
#[derive(Debug, thiserror::Error)]
#[error("poison message: {0}")]
pub struct Poison(pub String);

/// Parses a message body.
pub fn parse(body: &[u8]) -> Result<Parsed, Poison> {
    let env: CloudEvent<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| Poison(format!("not a CloudEvent: {e}")))?;
    let Some(kind) = env.kind() else {
        return Ok(Parsed::Unknown(env.event_type));
    };
    match AggregateType::parse(&env.aggregatetype) {
        None => return Ok(Parsed::Unknown(env.aggregatetype)),
        Some(a) if a != kind.aggregate_type() => {
            return Err(Poison(format!(
                "type {} does not belong to aggregate {a:?}",
                env.event_type
            )));
        }
        Some(_) => {}
    }
    let subject = Uuid::parse_str(&env.subject).map_err(|_| Poison("subject is not a UUID".into()))?;
    if contains_nul(&env.data) {
        // PostgreSQL stores no NUL in text or jsonb: it would refuse the event anyway.
        return Err(Poison("data holds a NUL character".into()));
    }
    if env.sequence < 1 {
        return Err(Poison(format!("sequence {} is not positive", env.sequence)));
    }
    let event = match kind.aggregate_type() {
        AggregateType::Product => {
            let data: ProductData =
                serde_json::from_value(env.data).map_err(|e| Poison(format!("product data: {e}")))?;
            if data.id != subject {
                return Err(Poison("data.id differs from subject".into()));
            }
            Event::Product {
                data,
                sequence: env.sequence,
                time: env.time,
            }
        }
        AggregateType::Order => {
            let data: OrderData = serde_json::from_value(env.data).map_err(|e| Poison(format!("order data: {e}")))?;
            if data.id != subject {
                return Err(Poison("data.id differs from subject".into()));
            }
            Event::Order {
                data,
                sequence: env.sequence,
                time: env.time,
            }
        }
    };
    Ok(Parsed::Event(Box::new(event)))
}

/// Whether any string (or key) in `v` holds a NUL.
fn contains_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordering_schema::events::EventKind;

    fn product(seq: i64) -> ProductData {
        let now = ordering_schema::events::now();
        ProductData {
            id: Uuid::now_v7(),
            sku: "s".into(),
            name: "n".into(),
            description: "d".into(),
            price_cents: 1,
            currency: "EUR".into(),
            stock: 1,
            version: seq,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn parses_known_unknown_and_poison() {
        let p = product(1);
        let ev = CloudEvent::new(EventKind::ProductCreated, p.id, 1, ordering_schema::events::now(), &p);
        let body = serde_json::to_vec(&ev).unwrap();
        assert!(matches!(parse(&body), Ok(Parsed::Event(_))));
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["type"] = "ordering.product.renamed.v9".into();
        assert!(matches!(
            parse(&serde_json::to_vec(&v).unwrap()),
            Ok(Parsed::Unknown(_))
        ));
        v["type"] = "ordering.product.created.v1".into();
        v["aggregatetype"] = "invoice".into();
        assert!(matches!(
            parse(&serde_json::to_vec(&v).unwrap()),
            Ok(Parsed::Unknown(_))
        ));
        v["aggregatetype"] = "product".into();
        v["data"] = serde_json::json!({"id": 1});
        assert!(parse(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(parse(b"{not json").is_err());
        let mut nul = serde_json::to_value(&ev).unwrap();
        nul["data"]["name"] = "a\u{0}b".into();
        assert!(parse(&serde_json::to_vec(&nul).unwrap()).is_err());
        v["aggregatetype"] = "order".into();
        assert!(parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
