//! The write side's domain model: products and orders, with no I/O.
//!
//! Two aggregates, [`Product`] and [`Order`], hold their state privately (the shared
//! [`ProductData`](ordering_schema::events::ProductData) and
//! [`OrderData`](ordering_schema::events::OrderData)) and change it only through commands.
//! Every command follows the same shape:
//!
//! 1. check every input rule of the contract ([`values`]), collecting all refusals into one
//!    [`DomainError::Validation`], so a client learns of every bad field at once;
//! 2. check the aggregate's own invariants (enough stock, a legal status transition);
//! 3. only then mutate: bump `version` by one, set `updated_at`, and return a [`Recorded`]
//!    event whose data is the new state and whose sequence is the new version.
//!
//! Because nothing changes before every check has passed, a refused command leaves the
//! aggregate exactly as it was; a command that touches several aggregates (placing or
//! cancelling an order) works on copies and writes them back only on success. The caller's
//! job is what the domain cannot see: loading and locking rows (products in ascending id
//! order, as [`PlaceOrder::product_ids`] gives them), persisting the new states and putting
//! the recorded events in the outbox in the same transaction.
//!
//! Time is passed in (`now`) rather than read, so the model is deterministic under test and
//! one command stamps every aggregate it changes with the same instant.

pub mod error;
pub mod order;
pub mod product;
#[cfg(test)]
mod proptests;
pub mod values;

pub use error::{DomainError, FieldError, Recorded};
pub use order::{Order, OrderLineRequest, PlaceOrder};
pub use product::{NewProduct, Product, ProductChanges};
