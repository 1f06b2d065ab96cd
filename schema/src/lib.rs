//! What the services of the ordering pipeline share about data.
//!
//! - [`schema`]: the diesel tables of the write side, and [`migrate`] with the migrations that
//!   create them (applied under an advisory lock, so several instances may start at once);
//! - [`events`]: the CloudEvents envelope and event names that the write side produces and
//!   every consumer parses: one definition, so the two sides cannot drift apart;
//! - [`consistency`]: the consistency token that links a command to the view versions that
//!   reflect it.
//!
//! Nothing here does I/O except [`migrate`].

pub mod consistency;
pub mod events;
pub mod migrate;
pub mod schema;

#[cfg(test)]
mod proptests;
