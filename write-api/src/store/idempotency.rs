//! Idempotency keys: a repeated command replays its first answer and writes nothing.
//!
//! The key's row is inserted at the start of the command's transaction. A concurrent repeat
//! with the same key blocks on the primary key until the first transaction ends: if it
//! committed, the repeat finds the stored answer and replays it; if it rolled back (a 5xx,
//! never remembered), the repeat's insert goes through and it runs the command itself. So
//! exactly one of them writes, and both answer the same.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_schema::schema::idempotency_keys as keys;
use sha2::{Digest, Sha256};

use crate::http::reply::Reply;

/// Which request a key belongs to.
pub struct KeyScope<'a> {
    pub caller: String,
    pub target: &'a str,
    pub key: &'a str,
    /// SHA-256 of the body's canonical JSON ("the same body" is the same JSON value).
    pub request_hash: Vec<u8>,
}

/// Hashes a body's JSON value; serde_json's maps are sorted, so key order does not matter.
pub fn request_hash(body: &serde_json::Value) -> Vec<u8> {
    Sha256::digest(body.to_string().as_bytes()).to_vec()
}

/// What claiming a key found.
pub enum Claim {
    /// The key is new: run the command, then [`record`] its answer.
    Fresh,
    /// The key was used with the same request: replay this answer.
    Replay(Reply),
    /// The key was used with a different request.
    Mismatch,
}

/// Claims the key for this transaction (see the module doc for the concurrency argument).
pub async fn claim(conn: &mut AsyncPgConnection, scope: &KeyScope<'_>) -> QueryResult<Claim> {
    let inserted = diesel::insert_into(keys::table)
        .values((
            keys::caller.eq(&scope.caller),
            keys::target.eq(scope.target),
            keys::key.eq(scope.key),
            keys::request_hash.eq(&scope.request_hash),
            keys::response_status.eq(0i16),
            keys::response_headers.eq(serde_json::json!([])),
            keys::response_body.eq(serde_json::Value::Null),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let (hash, status, headers, body): (Vec<u8>, i16, serde_json::Value, serde_json::Value) = keys::table
        .find((&scope.caller, scope.target, scope.key))
        .select((
            keys::request_hash,
            keys::response_status,
            keys::response_headers,
            keys::response_body,
        ))
        .first(conn)
        .await?;
    if hash != scope.request_hash {
        return Ok(Claim::Mismatch);
    }
    let headers =
        serde_json::from_value(headers).map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    Ok(Claim::Replay(Reply {
        status: status as u16,
        headers,
        body,
    }))
}

/// Stores the answer of a claimed key, in the same transaction as the command.
pub async fn record(conn: &mut AsyncPgConnection, scope: &KeyScope<'_>, reply: &Reply) -> QueryResult<()> {
    let headers =
        serde_json::to_value(&reply.headers).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    diesel::update(keys::table.find((&scope.caller, scope.target, scope.key)))
        .set((
            keys::response_status.eq(reply.status as i16),
            keys::response_headers.eq(headers),
            keys::response_body.eq(&reply.body),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes keys older than `max_age` (run periodically); returns how many.
pub async fn expire(conn: &mut AsyncPgConnection, max_age: std::time::Duration) -> QueryResult<usize> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::days(1));
    diesel::delete(keys::table.filter(keys::created_at.lt(cutoff)))
        .execute(conn)
        .await
}
