//! The projector's dead-letter queue (`<PROJECTOR_QUEUE>.dead`) for operators:
//! `read-api dlq list | show | replay | discard`.
//!
//! A quorum queue has no way to read a message without taking it, and a message taken and given
//! back (a closed channel, a reject) counts as a delivery: RabbitMQ 4.0 to 4.2 drop a message
//! after 20 of them. So every command takes the messages it looks at and, with publisher
//! confirms, puts back a fresh copy of each one it keeps (through the dead-letter exchange with
//! the routing key it came with; at the back of the queue, its delivery count back at zero)
//! before acknowledging the original. Nothing is lost: a crash
//! between the copy's confirm and the original's ack leaves the message twice, which `replay`
//! tolerates (the projector ignores an event it has already applied). Only the messages the
//! queue held when the command started are taken, so copies are never read again.
//!
//! A dead letter's id is the first 12 hex digits of the SHA-256 of its routing key and body: it
//! stays the same however often the message is copied, and identical messages share it.

use std::collections::BTreeMap;
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use ordering_platform::amqp::AmqpNodes;
use ordering_platform::terminal::{clip, printable};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::projector::{REASON_HEADER, dead_letter_exchange, dead_letter_queue};

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("the broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] ordering_platform::amqp::ConnectError),
    #[error("there is no queue {0} on this broker (the projector declares it when it first starts)")]
    NoQueue(String),
    #[error("the broker did not confirm a copy of dead letter {0}; it is still in the queue")]
    NotConfirmed(String),
    #[error("no dead letter with id {id} in {queue}")]
    Unknown { id: String, queue: String },
}

/// One message of the dead-letter queue, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Stable id (see the module doc).
    pub id: String,
    /// The routing key it was first published with (its event type).
    pub routing_key: String,
    /// `type`, `subject` and `sequence` of its CloudEvents body, when it has them.
    pub event_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub sequence: Option<i64>,
    /// Why it is here: the projector's reason header (the parse error, the database's
    /// refusal, the gap that timed out), or the broker's `x-death` reason.
    pub reason: String,
    /// When it was dead-lettered (`x-death`'s time), when known.
    pub dead_at: Option<DateTime<Utc>>,
    /// Every header, as text.
    pub headers: BTreeMap<String, String>,
    /// The body: JSON when it is JSON, else the text with invalid bytes replaced.
    pub body: serde_json::Value,
    #[serde(skip)]
    raw: Vec<u8>,
    #[serde(skip)]
    properties: BasicProperties,
}

impl DeadLetter {
    fn from_delivery(d: &Delivery) -> Self {
        let headers: BTreeMap<String, String> = d
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().iter().map(|(k, v)| (k.to_string(), text(v))).collect())
            .unwrap_or_default();
        let death = first_death(&d.properties);
        let routing_key = death
            .as_ref()
            .and_then(|x| x.get("routing-keys"))
            .and_then(|v| match v {
                AMQPValue::FieldArray(a) => a.as_slice().first().map(text),
                _ => None,
            })
            .unwrap_or_else(|| d.routing_key.to_string());
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&d.data).ok();
        let field = |name: &str| parsed.as_ref().and_then(|b| b.get(name));
        let reason = headers.get(REASON_HEADER).cloned().unwrap_or_else(|| {
            match death.as_ref().and_then(|x| x.get("reason")).map(text).as_deref() {
                Some("rejected") => {
                    "rejected by the projector: malformed or refused by the database (its log says why)".to_owned()
                }
                Some(other) => format!("dead-lettered by the broker: {other}"),
                None => "published to the dead-letter queue directly".to_owned(),
            }
        });
        let seconds = |t: u64| DateTime::from_timestamp(i64::try_from(t).ok()?, 0);
        // The broker's `x-death` time, or the timestamp the projector gave it when it
        // published it here itself.
        let dead_at = match death.as_ref().and_then(|x| x.get("time")) {
            Some(AMQPValue::Timestamp(t)) => seconds(*t),
            _ => d.properties.timestamp().and_then(seconds),
        };
        Self {
            id: id_of(&routing_key, &d.data),
            event_type: field("type").and_then(|v| v.as_str()).map(str::to_owned),
            aggregate_id: field("subject").and_then(|v| v.as_str()).map(str::to_owned),
            sequence: field("sequence").and_then(serde_json::Value::as_i64),
            body: parsed.unwrap_or_else(|| serde_json::Value::String(String::from_utf8_lossy(&d.data).into_owned())),
            routing_key,
            reason,
            dead_at,
            headers,
            raw: d.data.clone(),
            properties: d.properties.clone(),
        }
    }
}

fn id_of(routing_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(routing_key.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(&h.finalize()[..6])
}

/// The first (most recent) `x-death` entry the broker added when it dead-lettered the message.
fn first_death(p: &BasicProperties) -> Option<BTreeMap<String, AMQPValue>> {
    let deaths = p.headers().as_ref()?.inner().get("x-death")?.clone();
    let AMQPValue::FieldArray(deaths) = deaths else {
        return None;
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(t) => Some(t.inner().iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
        _ => None,
    }
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// What a command does with each message it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Put a copy back in the dead-letter queue.
    Keep,
    /// Send it to the projector's queue to be applied again.
    Replay,
    /// Drop it for good.
    Discard,
}

/// What a passive declare says of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages ready (not counting those delivered and not yet acknowledged).
    pub messages: u32,
    pub consumers: u32,
}

/// The dead-letter queue of one projector queue, on a connection of its own.
pub struct DeadLetterQueue {
    conn: Connection,
    channel: Channel,
    projector_queue: String,
    queue: String,
    exchange: String,
}

impl DeadLetterQueue {
    /// Connects and checks that `<projector_queue>.dead` exists (declares nothing).
    pub async fn open(nodes: &AmqpNodes, projector_queue: &str) -> Result<Self, DeadLetterError> {
        let conn = nodes.connect("read-api dlq").await?.connection;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            conn,
            channel,
            projector_queue: projector_queue.to_owned(),
            queue: dead_letter_queue(projector_queue),
            exchange: dead_letter_exchange(projector_queue),
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.queue
    }

    /// The projector's queue.
    pub fn projector_queue(&self) -> &str {
        &self.projector_queue
    }

    /// How many messages `queue` holds ready and how many consumers it has, by a passive
    /// declare on a channel of its own (a missing queue closes the channel it is asked on).
    pub async fn depth(&self, queue: &str) -> Result<QueueDepth, DeadLetterError> {
        let probe = self.conn.create_channel().await?;
        let declared = probe
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|_| DeadLetterError::NoQueue(queue.to_owned()))?;
        let _ = probe.close(200, "bye".into()).await;
        Ok(QueueDepth {
            messages: declared.message_count(),
            consumers: declared.consumer_count(),
        })
    }

    /// Replays (to the projector's queue) or discards every dead letter with `id` (every one
    /// with `None`, for a replay), keeping the others; returns how many. `Unknown` if none has
    /// that id.
    pub async fn resolve(&self, id: Option<&str>, what: Disposition) -> Result<usize, DeadLetterError> {
        let taken = self
            .sweep(usize::MAX, |d| {
                if id.is_none_or(|id| d.id == id) {
                    what
                } else {
                    Disposition::Keep
                }
            })
            .await?;
        let n = taken.iter().filter(|(_, done)| *done == what).count();
        match id {
            Some(id) if n == 0 => Err(DeadLetterError::Unknown {
                id: id.to_owned(),
                queue: self.queue.clone(),
            }),
            _ => Ok(n),
        }
    }

    /// Takes at most `limit` of the messages the queue holds now, oldest first, and does with
    /// each what `decide` says; returns what it took, with what was done.
    pub async fn sweep(
        &self,
        limit: usize,
        mut decide: impl FnMut(&DeadLetter) -> Disposition,
    ) -> Result<Vec<(DeadLetter, Disposition)>, DeadLetterError> {
        let held = self.depth(&self.queue).await?.messages;
        let mut taken = Vec::new();
        for _ in 0..(held as usize).min(limit) {
            let Some(got) = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let letter = DeadLetter::from_delivery(&got.delivery);
            let disposition = decide(&letter);
            // A kept copy goes back through the dead-letter exchange with the routing key it
            // came with, so its id (which hashes that key) never changes. A replay goes through
            // the default exchange straight into one queue: it reaches only this projector,
            // not every consumer of the events exchange.
            let target = match disposition {
                Disposition::Keep => Some((self.exchange.as_str(), letter.routing_key.as_str())),
                Disposition::Replay => Some(("", self.projector_queue.as_str())),
                Disposition::Discard => None,
            };
            if let Some((exchange, routing_key)) = target {
                let confirm = self
                    .channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &letter.raw,
                        letter.properties.clone(),
                    )
                    .await?
                    .await?;
                if !confirm.is_ack() {
                    return Err(DeadLetterError::NotConfirmed(letter.id));
                }
            }
            got.delivery.acker.ack(BasicAckOptions::default()).await?;
            taken.push((letter, disposition));
        }
        Ok(taken)
    }

    /// Closes the channel and connection.
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// `letters` as an aligned table for people, or one line saying there are none in `queue`.
pub fn table(out: &mut impl Write, letters: &[DeadLetter], queue: &str) -> io::Result<()> {
    if letters.is_empty() {
        return writeln!(out, "no dead letters in {queue}");
    }
    const HEADERS: [&str; 5] = ["ID", "EVENT", "AGGREGATE", "SEQ", "DEAD SINCE"];
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|d| {
            [
                d.id.clone(),
                clip(&printable(d.event_type.as_deref().unwrap_or(&d.routing_key), false), 40),
                clip(&printable(d.aggregate_id.as_deref().unwrap_or("-"), false), 36),
                d.sequence.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                d.dead_at
                    .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string()),
                clip(&printable(&d.reason, false), 60),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = [HEADERS[0], HEADERS[1], HEADERS[2], HEADERS[3], HEADERS[4], "REASON"].map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, w) in row[..5].iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        line.push_str(&row[5]);
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// One dead letter in full: its fields, headers and body (indented JSON when it is JSON).
pub fn show(out: &mut impl Write, d: &DeadLetter) -> io::Result<()> {
    writeln!(out, "id:          {}", d.id)?;
    writeln!(out, "routing key: {}", printable(&d.routing_key, false))?;
    writeln!(out, "reason:      {}", printable(&d.reason, false))?;
    if let Some(t) = d.dead_at {
        writeln!(out, "dead since:  {}", t.format("%Y-%m-%d %H:%M:%SZ"))?;
    }
    writeln!(out, "headers:")?;
    for (k, v) in &d.headers {
        writeln!(out, "  {}: {}", printable(k, false), printable(v, false))?;
    }
    writeln!(out, "body:")?;
    let body = match &d.body {
        serde_json::Value::String(s) => s.clone(),
        json => serde_json::to_string_pretty(json).unwrap_or_default(),
    };
    writeln!(out, "{}", printable(&body, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_depends_on_routing_key_and_body_only() {
        assert_eq!(id_of("order.placed", b"{}"), id_of("order.placed", b"{}"));
        assert_ne!(id_of("order.placed", b"{}"), id_of("order.paid", b"{}"));
        assert_ne!(id_of("a", b"bc"), id_of("ab", b"c"));
        assert_eq!(id_of("k", b"x").len(), 12);
    }
}
