//! The one outbox writer: every event of every command goes through [`append`], in the
//! command's own transaction, so an event exists if and only if its change was committed.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
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
/// with (`traceparent` when the command had one).
pub async fn append(conn: &mut AsyncPgConnection, events: &[Recorded], traceparent: Option<&str>) -> QueryResult<()> {
    let headers = match traceparent {
        Some(tp) => serde_json::json!({ "traceparent": tp }),
        None => serde_json::json!({}),
    };
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
