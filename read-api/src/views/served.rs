//! The JSON the endpoints serve, as types. The projector stores each view by serializing
//! these (so the stored document is the answer, sent as it is without re-serialization), and
//! the OpenAPI document describes the same types: what is served and what is documented
//! cannot drift apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ordering_schema::events::{OrderData, OrderStatus, ProductData};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The product view: the product's state at `version`.
pub type ProductView = ProductData;

/// The product view of `data` at version `sequence`. The view's version is the event's
/// sequence (equal for a well-formed event; the sequence is what the version guard checks,
/// so the view shows that).
pub fn product_view(data: &ProductData, sequence: i64) -> ProductView {
    ProductView {
        version: sequence,
        ..data.clone()
    }
}

/// One step of an order's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    /// When the event that made this status happened.
    pub at: DateTime<Utc>,
}

/// The order view: the order's state at `version` and its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderView {
    #[serde(flatten)]
    pub order: OrderData,
    /// Every status the order has had, oldest first.
    pub history: Vec<HistoryEntry>,
}

impl OrderView {
    /// The view of `data` at version `sequence`, reached by an event at `at`, with that one
    /// step as its history (the stored view appends it to the steps before).
    pub fn after_event(data: &OrderData, sequence: i64, at: DateTime<Utc>) -> Self {
        Self {
            order: OrderData {
                version: sequence,
                ..data.clone()
            },
            history: vec![HistoryEntry {
                status: data.status,
                at,
            }],
        }
    }
}

/// One order in a customer's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderListItem {
    pub id: Uuid,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    /// Units ordered (the sum of the lines' quantities).
    pub item_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&OrderData> for OrderListItem {
    fn from(o: &OrderData) -> Self {
        Self {
            id: o.id,
            status: o.status,
            total_cents: o.total_cents,
            currency: o.currency.clone(),
            item_count: o.lines.iter().map(|l| l.quantity).sum(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// A customer's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct CustomerSummary {
    pub customer_id: Uuid,
    pub order_count: i64,
    /// Orders placed or paid, not yet shipped or cancelled.
    pub open_order_count: i64,
    /// Per currency, the exact sum of the paid and shipped orders' totals. One order's total
    /// fits `i64` at the write side's limits (100 lines × 10,000 × 10^12 cents = 10^18), a
    /// customer's sum of them does not: `i128` holds any number of such orders there could be.
    pub spent_cents: BTreeMap<String, i128>,
    pub last_order_at: Option<DateTime<Utc>>,
}
