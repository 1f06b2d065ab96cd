//! The one outbox writer: every event of every command goes through [`append`], in the
//! command's own transaction, so an event exists if and only if its change was committed.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_platform::trace_context;
use ordering_schema::events::CloudEvent;
use ordering_schema::schema::outbox;
use uuid::Uuid;

use crate::domain::Recorded;

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewOutboxRow {
    event_id: Uuid,
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: &'static str,
    payload: serde_json::Value,
    headers: serde_json::Value,
}

/// The CloudEvents body of a recorded event, as stored and published.
pub fn envelope(event: &Recorded) -> Result<CloudEvent, serde_json::Error> {
    let (data, time) = match event {
        Recorded::Product(_, p) => (serde_json::to_value(p)?, p.updated_at),
        Recorded::Order(_, o) => (serde_json::to_value(o)?, o.updated_at),
    };
    Ok(CloudEvent::new(
        event.kind(),
        event.aggregate_id(),
        event.sequence(),
        time,
        data,
    ))
}

/// Appends `events` to the outbox in one statement, with the message headers to publish them
/// with: the W3C trace context of the current span (the command's transaction) when traced,
/// so the relay's publish continues this trace; untraced, the caller's `traceparent` and
/// `tracestate` unchanged (`caller_trace`), and no headers (`{}`) if it sent none.
pub async fn append(
    conn: &mut AsyncPgConnection,
    events: &[Recorded],
    caller_trace: &serde_json::Map<String, serde_json::Value>,
) -> QueryResult<()> {
    let mut headers = caller_trace.clone();
    trace_context::inject_json(&tracing::Span::current(), &mut headers);
    let headers = serde_json::Value::Object(headers);
    let rows = events
        .iter()
        .map(|event| {
            let ce = envelope(event).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
            Ok(NewOutboxRow {
                event_id: ce.id,
                aggregate_type: event.kind().aggregate_type().as_str(),
                aggregate_id: event.aggregate_id().to_string(),
                sequence: event.sequence(),
                event_type: event.kind().routing_key(),
                payload: serde_json::to_value(&ce)
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?,
                headers: headers.clone(),
            })
        })
        .collect::<QueryResult<Vec<_>>>()?;
    diesel::insert_into(outbox::table).values(&rows).execute(conn).await?;
    Ok(())
}
