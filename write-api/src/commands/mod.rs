//! The commands of the write side, one file each: request type, validation, handler and the
//! work done in the database, readable top to bottom.
//!
//! Every command runs through [`execute`]: one transaction holding the domain change, its
//! outbox rows and (with an `Idempotency-Key`) the remembered answer. A failure anywhere
//! rolls all of it back, so a refused or failed command leaves no trace.

pub mod adjust_stock;
pub mod cancel_order;
pub mod create_product;
pub mod pay_order;
pub mod place_order;
pub mod ship_order;
pub mod update_product;

use std::future::Future;
use std::time::Instant;

use axum::http::StatusCode;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use ordering_platform::trace_context;
use ordering_schema::consistency::VersionMark;
use ordering_schema::events::AggregateType;
use tracing::Instrument;
use uuid::Uuid;

use crate::app::AppState;
use crate::domain::{DomainError, Order, Product, Recorded};
use crate::error::ApiError;
use crate::http::meta::{CommandMeta, IfMatch};
use crate::http::reply::Reply;
use crate::store::idempotency::{self, Claim, KeyScope};
use crate::store::{orders, outbox, products};

/// A validated command, ready to run inside a transaction.
pub trait Command: Send {
    /// Loads and locks what it changes, asks the domain, stores the new state and the events.
    fn run(
        self,
        conn: &mut AsyncPgConnection,
        meta: &CommandMeta,
    ) -> impl Future<Output = Result<Reply, ApiError>> + Send;

    /// The business counter ([`crate::catalog`]) a committed success of this command adds to.
    const COUNTER: Option<&'static str> = None;
}

/// How a command's transaction ended, for the business counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The command ran and its change (if any) committed.
    Done,
    /// Refused (a 4xx) and the refusal remembered under its `Idempotency-Key`.
    Refused { stock: bool },
    /// A repeat, answered with the first answer: counted then, not again.
    Replayed,
}

/// Is `e` the refusal of an order or adjustment for want of stock?
fn is_stock_refusal(e: &ApiError) -> bool {
    matches!(e, ApiError::Domain(DomainError::InsufficientStock { .. }))
}

/// Counts a finished command, now that its transaction committed (or rolled back).
fn count<C: Command>(result: &Result<(Reply, Ending), ApiError>) {
    let counter = match result {
        Ok((_, Ending::Done)) => C::COUNTER,
        Ok((_, Ending::Refused { stock: true })) => Some(crate::catalog::STOCK_REFUSALS),
        Err(e) if is_stock_refusal(e) => Some(crate::catalog::STOCK_REFUSALS),
        _ => None,
    };
    if let Some(name) = counter {
        metrics::counter!(name).increment(1);
    }
}

/// Runs `command` in one transaction, honouring the request's `Idempotency-Key`.
///
/// With a key, the command runs in a savepoint after the key is claimed: a refusal (4xx)
/// rolls back the command's changes but keeps the key with the refusal as its answer, so the
/// repeat gets the same refusal; an internal error rolls back everything, key included.
///
/// The transaction runs in a task of its own: a client that hangs up (or the request
/// timeout) drops the request's future, and dropping a transaction midway would hand its
/// connection back to the pool still inside the transaction, holding its row locks.
///
/// That task must not commit after the client was told "503 timeout", or a retry would apply
/// the command twice. So it has a budget a little under the request timeout: each statement is
/// cancelled by PostgreSQL past it (the pool's `statement_timeout`), and the transaction is
/// rolled back instead of committed when the budget is spent. Only a COMMIT itself taking
/// longer than the margin (a fifth of the timeout, at most 1 s) could still land after a 503.
pub async fn execute<C: Command + 'static>(
    app: &AppState,
    meta: &CommandMeta,
    body: &serde_json::Value,
    command: C,
) -> Result<Reply, ApiError> {
    let deadline = Instant::now() + app.command_budget;
    let (app, meta, body) = (app.clone(), meta.clone(), body.clone());
    // The transaction's span, a child of the request's: its context is what the outbox rows
    // carry to the relay (`outbox::append`). A rollback (refusal or failure) is its error.
    let span = tracing::info_span!(
        "transaction",
        otel.name = "command transaction",
        db.system.name = "postgresql"
    );
    let task = async move {
        let result = run_in_transaction(&app, &meta, &body, command, deadline).await;
        count::<C>(&result);
        if result.is_err() {
            trace_context::fail(&tracing::Span::current(), "rolled back");
        }
        result.map(|(reply, _)| reply)
    };
    tokio::spawn(task.instrument(span))
        .await
        .map_err(|e| ApiError::Problem(ordering_platform::problem::Problem::internal(&e)))?
}

async fn run_in_transaction<C: Command>(
    app: &AppState,
    meta: &CommandMeta,
    body: &serde_json::Value,
    command: C,
    deadline: Instant,
) -> Result<(Reply, Ending), ApiError> {
    let mut conn = app.pool.get().await?;
    let scope = meta.idempotency_key.as_deref().map(|key| KeyScope {
        caller: meta.caller.subject.to_string(),
        target: &meta.target,
        key,
        request_hash: idempotency::request_hash(body),
    });
    conn.transaction::<_, ApiError, _>(async |conn| {
        let reply = run_claimed(conn, meta, scope.as_ref(), command).await?;
        if Instant::now() >= deadline {
            return Err(ApiError::TimedOut);
        }
        Ok(reply)
    })
    .await
}

/// The body of the transaction: with an `Idempotency-Key`, claim it first and remember the
/// answer; without one, just the command.
async fn run_claimed<C: Command>(
    conn: &mut AsyncPgConnection,
    meta: &CommandMeta,
    scope: Option<&KeyScope<'_>>,
    command: C,
) -> Result<(Reply, Ending), ApiError> {
    let Some(scope) = scope else {
        return Ok((command.run(conn, meta).await?, Ending::Done));
    };
    match idempotency::claim(conn, scope).await? {
        Claim::Replay(reply) => return Ok((reply, Ending::Replayed)),
        Claim::Mismatch => return Err(ApiError::IdempotencyKeyReused),
        Claim::Fresh => {}
    }
    let outcome = conn
        .transaction::<_, ApiError, _>(async |conn| command.run(conn, meta).await)
        .await;
    let (reply, ending) = match outcome {
        Ok(reply) => (reply, Ending::Done),
        Err(e) if e.is_client_error() => (
            Reply::refusal(&e),
            Ending::Refused {
                stock: is_stock_refusal(&e),
            },
        ),
        Err(e) => return Err(e),
    };
    idempotency::record(conn, scope, &reply).await?;
    Ok((reply, ending))
}

/// The reply of a command that changed one product.
pub fn product_reply(product: &Product, meta: &CommandMeta) -> Result<Reply, ApiError> {
    let p = product.state();
    Reply::success(
        StatusCode::OK,
        p,
        p.version,
        None,
        None,
        vec![VersionMark {
            aggregate: AggregateType::Product,
            id: p.id,
            version: p.version,
        }],
        meta,
    )
}

/// Locks product `id`, checks `If-Match`, applies `change`, and stores the new state and its
/// event: the whole of a single-product command. A change that records nothing (`None`: it
/// restated the current state) writes nothing and answers the current state.
pub async fn change_product(
    conn: &mut AsyncPgConnection,
    meta: &CommandMeta,
    id: Uuid,
    change: impl FnOnce(&mut Product) -> Result<Option<Recorded>, DomainError> + Send,
) -> Result<Reply, ApiError> {
    let mut product = products::lock(conn, id).await?.ok_or(ApiError::NotFound("product"))?;
    check_precondition(meta.if_match, "product", product.version())?;
    if let Some(event) = change(&mut product)? {
        products::save(conn, &product).await?;
        outbox::append(conn, &[event], &meta.trace_headers).await?;
    }
    product_reply(&product, meta)
}

/// Locks order `id` as seen by the caller: a customer sees only its own orders; anyone
/// else's is "not found", so existence is not revealed.
pub async fn lock_visible_order(conn: &mut AsyncPgConnection, meta: &CommandMeta, id: Uuid) -> Result<Order, ApiError> {
    let order = orders::lock(conn, id).await?.ok_or(ApiError::NotFound("order"))?;
    if !meta.caller.is_admin() && order.customer_id() != meta.caller.subject {
        return Err(ApiError::NotFound("order"));
    }
    check_precondition(meta.if_match, "order", order.version())?;
    Ok(order)
}

/// The reply of a command on an order; `events` are all it recorded, so the consistency
/// token covers every aggregate it changed (the order and any product whose stock moved).
pub fn order_reply(
    status: StatusCode,
    order: &Order,
    events: &[Recorded],
    meta: &CommandMeta,
) -> Result<Reply, ApiError> {
    let o = order.state();
    let location = (status == StatusCode::CREATED).then(|| meta.read_api_url.of(&format!("/v1/orders/{}", o.id)));
    let marks = events
        .iter()
        .map(|e| VersionMark {
            aggregate: e.kind().aggregate_type(),
            id: e.aggregate_id(),
            version: e.sequence(),
        })
        .collect();
    Reply::success(status, o, o.version, location, Some(o.customer_id), marks, meta)
}

/// Locks order `id`, checks visibility and `If-Match`, applies a status `change` that touches
/// no product, and stores it with its event.
pub async fn change_order_status(
    conn: &mut AsyncPgConnection,
    meta: &CommandMeta,
    id: Uuid,
    change: impl FnOnce(&mut Order) -> Result<Recorded, DomainError> + Send,
) -> Result<Reply, ApiError> {
    let mut order = lock_visible_order(conn, meta, id).await?;
    let event = change(&mut order)?;
    orders::save(conn, &order).await?;
    let events = [event];
    outbox::append(conn, &events, &meta.trace_headers).await?;
    order_reply(StatusCode::OK, &order, &events, meta)
}

/// 412 unless the aggregate's `version` meets the request's `If-Match`.
pub fn check_precondition(if_match: Option<IfMatch>, aggregate: &'static str, version: i64) -> Result<(), ApiError> {
    match if_match {
        Some(p) if !p.matches(version) => Err(ApiError::VersionConflict {
            aggregate,
            expected: p.describe(),
            actual: Some(version),
        }),
        _ => Ok(()),
    }
}

/// `If-Match` on a command that creates an aggregate can never hold: nothing exists yet.
pub fn refuse_precondition_on_create(if_match: Option<IfMatch>, aggregate: &'static str) -> Result<(), ApiError> {
    match if_match {
        Some(p) => Err(ApiError::VersionConflict {
            aggregate,
            expected: p.describe(),
            actual: None,
        }),
        None => Ok(()),
    }
}

/// A path id: anything that is not a UUID names nothing, so it is 404 like a missing id.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}
