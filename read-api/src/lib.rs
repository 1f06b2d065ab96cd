//! The read side of the ordering pipeline: denormalised views built from the events, cached,
//! served over HTTP with read-your-writes.
//!
//! It learns everything from the events on `ordering.events` (never from the write side's
//! tables), keeps the views in PostgreSQL (`READ_DATABASE_URL`, tables `rv_*`), caches them
//! in memory and in Redis, and serves the read endpoints of docs/api.md. How it keeps its
//! promises:
//!
//! - **Each event changes a view exactly once** ([`views`], [`projector`]). Every view row
//!   stores the version of its aggregate; events are applied by guarded upserts (set-wise, a
//!   batch per transaction) that only move a row from `v` to `v + 1`. A duplicate or an older
//!   delivery matches nothing and is counted. The projector acknowledges a message only after its
//!   transaction committed, so crashes cause redeliveries, never losses.
//! - **Nothing stalls the projector** ([`projector`]). An event from the future (a gap) is
//!   parked in PostgreSQL in the transaction that finds the gap and acknowledged, so it
//!   leaves the prefetch window; the transaction that applies its predecessor applies it
//!   (per-aggregate advisory locks keep this right with several instances on one queue). A
//!   gap older than `GAP_TIMEOUT` goes to the dead-letter queue and is reported (log, metric,
//!   readiness detail). Poison and events the database refuses go to the dead-letter queue
//!   one by one; transient database failures are retried; unknown event types are
//!   acknowledged and counted.
//! - **Started on an empty view database while the stream has history**, the read-api does
//!   not replay it by itself: events of aggregates it never saw park, their gaps time out
//!   to the dead-letter queue, and the log and readiness say to run `read-api rebuild`.
//! - **The cache never shows an older version over a newer one** ([`cache`]). Both tiers
//!   (in-process and Redis) are written by compare-and-set on the version (a Lua script in
//!   Redis); announcements of applied changes invalidate the in-process tier and leave a
//!   version floor behind. Misses of one key share one read (single flight).
//! - **Redis is optional.** Every Redis call is bounded by a short timeout and a failure pauses
//!   Redis use briefly, so requests go to PostgreSQL without a 5xx; the connection manager
//!   reconnects by itself and the cache is used again without a restart. Readiness stays 200
//!   and names the degradation.
//! - **The view database going away costs what the cache can not answer.** Views already cached
//!   are still served, as is a consistency token naming only the view read when the cache holds
//!   its version; everything else is 503 (bounded by the pool's timeouts). The projector retries
//!   the lost connection for as long as it lasts, so the queue's backlog applies once the
//!   database is back, without a restart. Readiness is 503 meanwhile.
//! - **Read your writes** ([`consistency`]). Every endpoint honours `X-Consistency-Token`,
//!   signed by the write-api: a forged or altered one is 400, and a caller waits only for the
//!   marks it may read ([`http`]). The request registers for the announcements of the
//!   aggregates it names, then checks the views, then sleeps until an announcement (PostgreSQL
//!   NOTIFY from the projector's own transaction, LISTENed by every instance) makes a re-check
//!   worthwhile, up to `CONSISTENCY_WAIT_MS`, then 503 `not_yet_consistent`. No polling: a
//!   waiting request is an idle future holding no connection, and at most
//!   `CONSISTENCY_MAX_WAITERS` wait at once (more: 503 `too_many_waiters` at once).
//! - **Lists use keyset cursors** ([`cursor`]), signed so they can not be forged or replayed
//!   against another query; page 1,000 costs what page 1 costs.
//! - **Rebuild** ([`rebuild`]) replays the stream into fresh tables with the projector's own
//!   code and swaps them in within one transaction.
//!
//! With `JWT_SECRET` set, `/admin` is a page for a person: the projector's queue, parked events
//! and gaps, the dead letters with Replay and Discard, the cache's hit ratio ([`admin`]).
//!
//! Catalog lists are read from PostgreSQL on every request (with an ETag): any product change
//! can change any page, and a transactional catalog-wide revision would serialize the
//! projector. Single products, orders, and each customer's lists and summary are cached.

pub mod admin;
pub mod announcement;
pub mod app;
pub mod cache;
pub mod catalog;
pub mod consistency;
pub mod cursor;
pub mod dead_letters;
pub mod error;
pub mod http;
pub mod migrate;
pub mod projector;
pub mod rebuild;
pub mod router;
pub mod service;
pub mod settings;
pub mod views;

pub use app::AppState;
pub use router::router;
pub use service::Service;
pub use settings::Settings;
