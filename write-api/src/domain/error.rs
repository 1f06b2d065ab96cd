//! What a command produces: the events it recorded, or the reason it was refused.
//!
//! The three refusals map one-to-one onto the contract's problem codes, so the HTTP layer
//! never has to look inside a message to choose a status.

use ordering_schema::events::{EventKind, OrderData, OrderStatus, ProductData};
use serde::Serialize;
use uuid::Uuid;

/// One refused field of a request, as listed in a `validation_failed` problem's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's path in the request body, e.g. `name` or `lines[2].quantity`.
    pub field: String,
    /// A short, human explanation that names the limit broken.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field` for the reason `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why the domain refused a command. Refusals leave the aggregates untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Some fields of the request break an input rule (422 `validation_failed`). Holds every
    /// refused field, not only the first, so a client can fix them all in one round trip.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// A product has less stock than a command needs (409 `insufficient_stock`).
    #[error("insufficient stock for product {product_id}: {available} available, {requested} requested")]
    InsufficientStock {
        product_id: Uuid,
        available: i64,
        requested: i64,
    },
    /// An order's status does not allow the command (409 `invalid_transition`).
    /// `action` is the status the command tried to reach: `paid`, `shipped` or `cancelled`.
    #[error("an order that is {} cannot be {action}", .from.as_str())]
    InvalidTransition { from: OrderStatus, action: &'static str },
}

impl DomainError {
    /// A validation refusal of a single field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

/// An event a change produced; the aggregate's state after the change is the event's data,
/// its version is the event's sequence.
///
/// Carrying the whole state (rather than a diff) is what the contract's events promise their
/// consumers, and it makes the event impossible to get out of step with the aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A change of a product.
    Product(EventKind, ProductData),
    /// A change of an order.
    Order(EventKind, OrderData),
}

impl Recorded {
    /// What kind of event this is (its routing key, CloudEvents type and aggregate type).
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Product(kind, _) | Self::Order(kind, _) => *kind,
        }
    }

    /// The id of the aggregate that changed: the event's `subject`.
    pub fn aggregate_id(&self) -> Uuid {
        match self {
            Self::Product(_, data) => data.id,
            Self::Order(_, data) => data.id,
        }
    }

    /// The aggregate's version after the change: the event's `sequence`.
    pub fn sequence(&self) -> i64 {
        match self {
            Self::Product(_, data) => data.version,
            Self::Order(_, data) => data.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn product_data() -> ProductData {
        let now = Utc::now();
        ProductData {
            id: Uuid::now_v7(),
            sku: "SKU-1".into(),
            name: "Widget".into(),
            description: String::new(),
            price_cents: 100,
            currency: "EUR".into(),
            stock: 3,
            version: 4,
            created_at: now,
            updated_at: now,
        }
    }

    fn order_data() -> OrderData {
        let now = Utc::now();
        OrderData {
            id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            status: OrderStatus::Paid,
            lines: vec![],
            total_cents: 0,
            currency: "EUR".into(),
            version: 2,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn recorded_exposes_kind_subject_and_sequence_of_its_data() {
        let p = product_data();
        let r = Recorded::Product(EventKind::ProductStockChanged, p.clone());
        assert_eq!(r.kind(), EventKind::ProductStockChanged);
        assert_eq!(r.aggregate_id(), p.id);
        assert_eq!(r.sequence(), 4);

        let o = order_data();
        let r = Recorded::Order(EventKind::OrderPaid, o.clone());
        assert_eq!(r.kind(), EventKind::OrderPaid);
        assert_eq!(r.aggregate_id(), o.id);
        assert_eq!(r.sequence(), 2);
    }

    #[test]
    fn messages_name_the_facts() {
        let id = Uuid::nil();
        let e = DomainError::InsufficientStock {
            product_id: id,
            available: 2,
            requested: 5,
        };
        assert_eq!(
            e.to_string(),
            format!("insufficient stock for product {id}: 2 available, 5 requested")
        );
        let e = DomainError::InvalidTransition {
            from: OrderStatus::Shipped,
            action: "cancelled",
        };
        assert_eq!(e.to_string(), "an order that is shipped cannot be cancelled");
        assert_eq!(
            DomainError::field("x", "y").to_string(),
            "the request has invalid fields"
        );
    }

    #[test]
    fn field_error_serializes_as_the_contract_names_it() {
        let v = serde_json::to_value(FieldError::new("lines[0].quantity", "must be 1 to 10000")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"field": "lines[0].quantity", "message": "must be 1 to 10000"})
        );
    }
}
