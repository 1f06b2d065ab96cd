//! The answers in the OpenAPI document. Single views and summaries are the types the views
//! store and serve ([`crate::views::served`]); pages are written by concatenating stored
//! items (no re-serialization on the hot path), so their wrappers below only describe them.

use ordering_schema::events::ProductData;
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::views::served::{CustomerSummary, HistoryEntry, OrderListItem, OrderView};

/// A page of products.
#[derive(Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductData>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A page of a customer's orders, newest first.
#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderListItem>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
