//! The broker objects the projector consumes from: the events exchange, its own quorum queue
//! and the dead-letter exchange and queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use ordering_platform::amqp::{self, AmqpNodes};

/// The argument that replicates a quorum queue over that many nodes.
const QUORUM_SIZE: &str = "x-quorum-initial-group-size";

/// Where the projector reads from.
#[derive(Clone, Debug)]
pub struct Topology {
    /// `AMQP_URL`: the broker's nodes.
    pub amqp_url: AmqpNodes,
    /// `AMQP_REPLICATION_FACTOR`: nodes holding the queue and its dead letters.
    pub replication_factor: u32,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub workers: usize,
}

impl Topology {
    /// The dead-letter queue of poison messages.
    pub fn dead_letter_queue(&self) -> String {
        dead_letter_queue(&self.queue)
    }

    pub(super) fn dead_letter_exchange(&self) -> String {
        dead_letter_exchange(&self.queue)
    }
}

/// The dead-letter queue of projector queue `queue`: `<queue>.dead`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The dead-letter exchange of projector queue `queue`: `<queue>.dlx`, a fanout into
/// [`dead_letter_queue`]. Publishing through it keeps a message's routing key.
pub fn dead_letter_exchange(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// Declares the exchange (as the relay does, so either may start first), the dead-letter
/// exchange and queue, and the projector's quorum queue bound with `#`, both queues replicated
/// over `replication_factor` nodes (queues declared before that setting are kept as they are:
/// [`amqp::declare_replicated`]). Idempotent.
pub async fn declare(conn: &Connection, ch: &Channel, t: &Topology) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        t.exchange.as_str().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let dlx = t.dead_letter_exchange();
    ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    let dlq = t.dead_letter_queue();
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    amqp::declare_replicated(conn, &dlq, &quorum, QUORUM_SIZE, t.replication_factor).await?;
    ch.queue_bind(
        dlq.as_str().into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut args = quorum;
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    amqp::declare_replicated(conn, &t.queue, &args, QUORUM_SIZE, t.replication_factor).await?;
    ch.queue_bind(
        t.queue.as_str().into(),
        t.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}
