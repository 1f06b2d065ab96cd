//! The broker side: connecting, declaring the topology, and turning an outbox row into the
//! contract's message.

use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use ordering_platform::amqp::{self, AmqpNodes};
use ordering_platform::trace_context;

use crate::store::OutboxRow;

/// A broker failure.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] amqp::ConnectError),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// What the relay declares on the broker.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The durable topic exchange.
    pub exchange: String,
    /// The stream bound to it with `#`.
    pub stream: String,
    /// `x-max-length-bytes` of the stream.
    pub max_bytes: u64,
    /// `x-max-age` of the stream.
    pub max_age: String,
    /// `x-initial-cluster-size` of the stream (`AMQP_REPLICATION_FACTOR`).
    pub replication_factor: u32,
}

/// An open connection with a channel in confirm mode.
pub struct BrokerConn {
    /// Kept so the connection lives as long as the channel.
    pub connection: Connection,
    /// The publishing channel, publisher confirms on.
    pub channel: Channel,
    /// The node it is connected to (`host:port`).
    pub node: String,
}

impl BrokerConn {
    /// Is the connection still up?
    pub fn connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Connects to a node of `nodes` that answers, opens a confirm-mode channel and declares
/// `topology` (idempotently).
pub async fn connect(nodes: &AmqpNodes, topology: &Topology) -> Result<BrokerConn, BrokerError> {
    // Each node gets its own connect timeout; this bounds the declarations after it.
    let limit = Duration::from_secs(10);
    let amqp::Connected { connection, node } = nodes.connect("outbox-relay").await?;
    let fut = async {
        let channel = connection.create_channel().await?;
        declare(&connection, &channel, topology).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, BrokerError>(channel)
    };
    let channel = tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| BrokerError::Timeout(limit))??;
    Ok(BrokerConn {
        connection,
        channel,
        node,
    })
}

/// Declares the exchange and its stream (replicated over `replication_factor` nodes), bound
/// with `#`. Declaring what exists with the same arguments is a no-op, so every instance does
/// it at every (re)connect; a stream declared before the replication setting is kept as it is
/// ([`amqp::declare_replicated`]).
pub async fn declare(conn: &Connection, channel: &Channel, t: &Topology) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            t.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(t.max_bytes.min(i64::MAX as u64) as i64),
    );
    args.insert("x-max-age".into(), AMQPValue::LongString(t.max_age.as_str().into()));
    amqp::declare_replicated(conn, &t.stream, &args, "x-initial-cluster-size", t.replication_factor).await?;
    channel
        .queue_bind(
            t.stream.as_str().into(),
            t.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Why a row can never be published as it is: it goes straight to the dead letters.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("event_type is {0} bytes; a routing key has at most 255")]
    RoutingKeyTooLong(usize),
    #[error("headers must be a JSON object of string values: {0}")]
    BadHeaders(String),
    #[error("header name {0:?} is longer than 255 bytes")]
    HeaderNameTooLong(String),
}

/// The message of `row`, published under `span`: persistent, CloudEvents content type,
/// `message_id` = event id, every stored header as an AMQP header; the routing key is
/// `event_type`.
///
/// `span` continues the trace stored in the row's `traceparent`/`tracestate`, and when traced
/// the message carries the span's own context instead, so the consumer's span is its child;
/// untraced, the stored headers go out unchanged.
pub fn message(row: &OutboxRow, span: &tracing::Span) -> Result<(ShortString, BasicProperties), Poison> {
    if row.event_type.len() > 255 {
        return Err(Poison::RoutingKeyTooLong(row.event_type.len()));
    }
    let mut headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&row.headers).map_err(|e| Poison::BadHeaders(e.to_string()))?;
    trace_context::continue_from(span, trace_context::extract_json(&headers));
    trace_context::inject_json(span, &mut headers);
    let mut table = FieldTable::default();
    for (k, v) in headers {
        let serde_json::Value::String(s) = v else {
            return Err(Poison::BadHeaders(format!("{k:?} is not a string")));
        };
        if k.len() > 255 {
            return Err(Poison::HeaderNameTooLong(k));
        }
        table.insert(k.into(), AMQPValue::LongString(LongString::from(s)));
    }
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ordering_schema::events::MESSAGE_CONTENT_TYPE.into())
        .with_message_id(row.event_id.to_string().into())
        .with_headers(table);
    Ok((row.event_type.as_str().into(), props))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(event_type: &str, headers: &str) -> OutboxRow {
        OutboxRow {
            id: 1,
            event_id: uuid::Uuid::nil(),
            aggregate_type: "order".into(),
            aggregate_id: "a".into(),
            sequence: 1,
            event_type: event_type.into(),
            payload: "{}".into(),
            headers: headers.into(),
            attempts: 0,
            partition: 0,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn message_has_the_contract_properties() {
        let (key, p) = message(
            &row("order.placed", r#"{"traceparent":"00-abc-def-01"}"#),
            &tracing::Span::none(),
        )
        .unwrap();
        assert_eq!(key.as_str(), "order.placed");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            p.message_id().as_ref().map(|c| c.as_str()),
            Some(uuid::Uuid::nil().to_string().as_str())
        );
        let h = p.headers().as_ref().unwrap();
        // Untraced, the stored header goes out unchanged.
        assert_eq!(
            h.inner().get("traceparent"),
            Some(&AMQPValue::LongString("00-abc-def-01".into()))
        );
    }

    #[test]
    fn poison_rows_are_recognised() {
        assert!(matches!(
            message(&row(&"x".repeat(256), "{}"), &tracing::Span::none()),
            Err(Poison::RoutingKeyTooLong(256))
        ));
        let none = tracing::Span::none();
        assert!(matches!(
            message(&row("a", r#"{"n": 1}"#), &none),
            Err(Poison::BadHeaders(_))
        ));
        assert!(matches!(message(&row("a", "[]"), &none), Err(Poison::BadHeaders(_))));
    }
}
