//! Every metric the write-api exports, with its `# HELP` text; registered at start by
//! [`install`]. The business counters count commands whose transaction committed (a repeat
//! answered from its `Idempotency-Key` is not counted again); all are per instance, so
//! `sum()` over instances is the total.

use ordering_platform::meters::{self, Metric};

/// Orders placed.
pub const ORDERS_PLACED: &str = "orders_placed_total";
/// Orders paid.
pub const ORDERS_PAID: &str = "orders_paid_total";
/// Orders shipped.
pub const ORDERS_SHIPPED: &str = "orders_shipped_total";
/// Orders cancelled.
pub const ORDERS_CANCELLED: &str = "orders_cancelled_total";
/// Commands refused for want of stock.
pub const STOCK_REFUSALS: &str = "stock_refusals_total";

/// The write-api's own metrics.
pub const WRITE: &[Metric] = &[
    Metric::counter(ORDERS_PLACED, "Orders placed (committed)."),
    Metric::counter(ORDERS_PAID, "Orders paid (committed)."),
    Metric::counter(ORDERS_SHIPPED, "Orders shipped (committed)."),
    Metric::counter(ORDERS_CANCELLED, "Orders cancelled (committed)."),
    Metric::counter(
        STOCK_REFUSALS,
        "Orders and stock adjustments refused 409 insufficient_stock.",
    ),
];

/// Describes the write-api's metrics and registers them at zero.
pub fn install() {
    meters::install(
        "write-api",
        env!("CARGO_PKG_VERSION"),
        &[meters::HTTP, meters::POOL, meters::BUILD, WRITE],
    );
}
