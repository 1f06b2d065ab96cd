//! Persistence: the only code of the write-api that speaks SQL. Each function takes the
//! command's connection, so everything a command does shares its one transaction.

pub mod idempotency;
pub mod orders;
pub mod outbox;
pub mod products;
