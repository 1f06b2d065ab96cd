//! The view tables: how events change them ([`apply`]) and what the endpoints read from
//! them ([`queries`]); how product search matches text ([`search`]); the JSON they serve, as
//! the types the OpenAPI document describes ([`served`]). The only module that speaks SQL.
//!
//! Everything is re-exported here, so callers name `crate::views::...` whichever half an item
//! lives in.

mod apply;
mod queries;
mod search;
pub mod served;

pub use apply::*;
pub use queries::*;
pub use search::search_text;

/// The names of one set of view tables: the live ones, or the fresh ones a rebuild fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub products: String,
    pub orders: String,
    pub customers: String,
}

impl Tables {
    /// The tables the endpoints read.
    pub fn live() -> Self {
        Self::with_suffix("")
    }

    /// The tables a rebuild fills before swapping them in.
    pub fn rebuild() -> Self {
        Self::with_suffix("_rebuild")
    }

    fn with_suffix(s: &str) -> Self {
        Self {
            products: format!("rv_products{s}"),
            orders: format!("rv_orders{s}"),
            customers: format!("rv_customers{s}"),
        }
    }

    /// Whether these are the live tables (only their changes are announced).
    pub fn is_live(&self) -> bool {
        *self == Self::live()
    }
}
