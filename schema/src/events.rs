//! The event envelope: what the write side puts in the outbox and every consumer parses.
//!
//! One definition for both sides, so a producer and a consumer can never disagree about a
//! field name. The body is a CloudEvents 1.0 structured event (docs/events.md); `data`
//! is the aggregate's whole state after the change, so a consumer never needs the write side's
//! tables.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `source` of every event the write-api produces.
pub const SOURCE: &str = "/ordering/write-api";
/// CloudEvents version of the envelope.
pub const SPEC_VERSION: &str = "1.0";
/// `datacontenttype` of every event.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// AMQP `content_type` of a published event.
pub const MESSAGE_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Default topic exchange the relay publishes to.
pub const DEFAULT_EXCHANGE: &str = "ordering.events";
/// The replayable stream bound to the exchange with `#`.
pub const EVENT_LOG_STREAM: &str = "ordering.events.log";

/// The two aggregates of the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateType {
    Product,
    Order,
}

impl AggregateType {
    /// The name used in `aggregatetype`, the outbox's `aggregate_type` and routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Product => "product",
            Self::Order => "order",
        }
    }

    /// Parses the name written by [`AggregateType::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "product" => Some(Self::Product),
            "order" => Some(Self::Order),
            _ => None,
        }
    }
}

/// Every kind of event the pipeline knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    ProductCreated,
    ProductUpdated,
    ProductStockChanged,
    OrderPlaced,
    OrderPaid,
    OrderShipped,
    OrderCancelled,
}

impl EventKind {
    /// All kinds, for tables and exhaustive tests.
    pub const ALL: [EventKind; 7] = [
        Self::ProductCreated,
        Self::ProductUpdated,
        Self::ProductStockChanged,
        Self::OrderPlaced,
        Self::OrderPaid,
        Self::OrderShipped,
        Self::OrderCancelled,
    ];

    /// The routing key and the outbox's `event_type`: `<aggregate_type>.<event>`.
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::ProductCreated => "product.created",
            Self::ProductUpdated => "product.updated",
            Self::ProductStockChanged => "product.stock_changed",
            Self::OrderPlaced => "order.placed",
            Self::OrderPaid => "order.paid",
            Self::OrderShipped => "order.shipped",
            Self::OrderCancelled => "order.cancelled",
        }
    }

    /// The CloudEvents `type`: `ordering.<routing key>.v1`.
    pub fn cloud_event_type(self) -> &'static str {
        match self {
            Self::ProductCreated => "ordering.product.created.v1",
            Self::ProductUpdated => "ordering.product.updated.v1",
            Self::ProductStockChanged => "ordering.product.stock_changed.v1",
            Self::OrderPlaced => "ordering.order.placed.v1",
            Self::OrderPaid => "ordering.order.paid.v1",
            Self::OrderShipped => "ordering.order.shipped.v1",
            Self::OrderCancelled => "ordering.order.cancelled.v1",
        }
    }

    /// The aggregate this kind of event belongs to.
    pub fn aggregate_type(self) -> AggregateType {
        match self {
            Self::ProductCreated | Self::ProductUpdated | Self::ProductStockChanged => AggregateType::Product,
            Self::OrderPlaced | Self::OrderPaid | Self::OrderShipped | Self::OrderCancelled => AggregateType::Order,
        }
    }

    /// Parses a CloudEvents `type`; `None` for types this version does not know.
    pub fn from_cloud_event_type(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.cloud_event_type() == s)
    }
}

/// A CloudEvents 1.0 structured event as stored in the outbox's `payload` and published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<D = serde_json::Value> {
    pub specversion: String,
    pub id: Uuid,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The aggregate's id.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub aggregatetype: String,
    /// The aggregate's `version` after this event.
    pub sequence: i64,
    pub data: D,
}

impl<D> CloudEvent<D> {
    /// The envelope of a new event of `kind` about aggregate `subject`, now at `sequence`.
    pub fn new(kind: EventKind, subject: Uuid, sequence: i64, time: DateTime<Utc>, data: D) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: Uuid::now_v7(),
            source: SOURCE.to_owned(),
            event_type: kind.cloud_event_type().to_owned(),
            subject: subject.to_string(),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            aggregatetype: kind.aggregate_type().as_str().to_owned(),
            sequence,
            data,
        }
    }

    /// The kind of event, if this version knows its `type`.
    pub fn kind(&self) -> Option<EventKind> {
        EventKind::from_cloud_event_type(&self.event_type)
    }
}

/// A product's state: the `data` of product events and the write-api's product answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProductData {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    /// The name stored in the database and sent in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the name written by [`OrderStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "placed" => Some(Self::Placed),
            "paid" => Some(Self::Paid),
            "shipped" => Some(Self::Shipped),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// One line of an order, with the product's sku, name and price as they were when placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLineData {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: i64,
    pub line_total_cents: i64,
}

/// An order's state: the `data` of order events and the write-api's order answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderData {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    pub lines: Vec<OrderLineData>,
    pub total_cents: i64,
    pub currency: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The current time at the precision PostgreSQL stores (microseconds), so that a state read
/// back from the database equals the state that was written and published.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_and_types_agree_on_the_aggregate() {
        for kind in EventKind::ALL {
            let key = kind.routing_key();
            assert!(key.starts_with(kind.aggregate_type().as_str()));
            assert_eq!(kind.cloud_event_type(), format!("ordering.{key}.v1"));
            assert_eq!(EventKind::from_cloud_event_type(kind.cloud_event_type()), Some(kind));
        }
        assert_eq!(EventKind::from_cloud_event_type("ordering.invoice.sent.v1"), None);
    }

    #[test]
    fn envelope_has_the_contract_field_names() {
        let id = Uuid::now_v7();
        let ev = CloudEvent::new(EventKind::OrderPlaced, id, 3, now(), serde_json::json!({"k": 1}));
        let v = serde_json::to_value(&ev).unwrap();
        for key in [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "aggregatetype",
            "sequence",
            "data",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["type"], "ordering.order.placed.v1");
        assert_eq!(v["aggregatetype"], "order");
        assert_eq!(v["subject"], id.to_string());
        let back: CloudEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
