//! Types that describe the answers in the OpenAPI document. The handlers send the stored
//! JSON as it is (no re-serialization on the hot path); these types say what it contains.

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use ordering_schema::events::{OrderLineData, OrderStatus, ProductData};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// A page of products.
#[derive(Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductData>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One step of an order's life.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    /// When the event that made this status happened.
    pub at: DateTime<Utc>,
}

/// The order view.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    pub lines: Vec<OrderLineData>,
    pub total_cents: i64,
    pub currency: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub history: Vec<HistoryEntry>,
}

/// One order in a customer's list.
#[derive(Serialize, ToSchema)]
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

/// A page of a customer's orders, newest first.
#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderListItem>,
    pub next_cursor: Option<String>,
}

/// A customer's summary.
#[derive(Serialize, ToSchema)]
pub struct CustomerSummary {
    pub customer_id: Uuid,
    pub order_count: i64,
    /// Orders placed or paid, not yet shipped or cancelled.
    pub open_order_count: i64,
    /// Per currency, the totals of paid and shipped orders: exact integers, which may pass
    /// 64 bits.
    pub spent_cents: BTreeMap<String, i128>,
    pub last_order_at: Option<DateTime<Utc>>,
}
