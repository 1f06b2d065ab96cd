//! A test exchange of its own and a consumer that records every delivery, with the checks
//! of the contract's promises. Everything declared is deleted when the value is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// The broker the tests use.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One delivery as the consumer saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
    pub event_id: uuid::Uuid,
    pub subject: String,
    pub sequence: i64,
    pub at: std::time::Instant,
}

impl Received {
    /// What `d` carries.
    pub fn of(d: &lapin::message::Delivery) -> Self {
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        Self {
            routing_key: d.routing_key.to_string(),
            properties: d.properties.clone(),
            body: d.data.clone(),
            event_id: v["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default(),
            subject: v["subject"].as_str().unwrap_or_default().to_owned(),
            sequence: v["sequence"].as_i64().unwrap_or_default(),
            at: std::time::Instant::now(),
        }
    }
}

/// Every message of `stream`, from its first offset, in stream order, read until none came
/// for `idle`: what a consumer replaying the stream sees.
pub async fn read_stream(conn: &Connection, stream: &str, idle: std::time::Duration) -> Deliveries {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(1000, BasicQosOptions::default()).await.expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(stream.into(), "replay".into(), BasicConsumeOptions::default(), args)
        .await
        .expect("consume the stream");
    let out = Deliveries::default();
    let mut n = 0u64;
    while let Ok(Some(Ok(d))) = tokio::time::timeout(idle, consumer.next()).await {
        out.0.lock().expect("deliveries").push(Received::of(&d));
        n += 1;
        if n.is_multiple_of(200) {
            let _ = d.acker.ack(lapin::options::BasicAckOptions { multiple: true }).await;
        }
    }
    let _ = ch.close(200, "read".into()).await;
    out
}

/// A uniquely named exchange (`test.<uuid>`) plus the queues a test binds to it.
pub struct TestExchange {
    pub name: String,
    conn: Connection,
    queues: Vec<String>,
}

/// What a consumer has received so far.
#[derive(Clone, Default)]
pub struct Deliveries(Arc<Mutex<Vec<Received>>>);

impl Deliveries {
    /// A copy of everything received.
    pub fn all(&self) -> Vec<Received> {
        self.0.lock().expect("deliveries").clone()
    }

    /// Distinct event ids received.
    pub fn event_ids(&self) -> HashSet<uuid::Uuid> {
        self.0.lock().expect("deliveries").iter().map(|r| r.event_id).collect()
    }

    /// Number of deliveries (duplicates included).
    pub fn len(&self) -> usize {
        self.0.lock().expect("deliveries").len()
    }

    /// Nothing received yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The contract's order promise, as a consumer can check it: per aggregate, the first
    /// delivery of each sequence comes after the first deliveries of all lower ones
    /// (sequences start at 1). Duplicates of sequences already seen are allowed.
    pub fn check_order(&self) -> Result<(), String> {
        let mut seen: HashMap<String, i64> = HashMap::new();
        for r in self.0.lock().expect("deliveries").iter() {
            let max = seen.entry(r.subject.clone()).or_insert(0);
            if r.sequence > *max + 1 {
                return Err(format!(
                    "aggregate {} got sequence {} before {} (event {})",
                    r.subject,
                    r.sequence,
                    *max + 1,
                    r.event_id
                ));
            }
            *max = (*max).max(r.sequence);
        }
        Ok(())
    }
}

impl TestExchange {
    /// Declares a fresh durable topic exchange, as the relay does.
    pub async fn new() -> Self {
        let name = format!("test.{}", uuid::Uuid::new_v4().simple());
        Self::named(&name).await
    }

    /// Declares the exchange `name`.
    pub async fn named(name: &str) -> Self {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
        Self {
            name: name.to_owned(),
            conn,
            queues: Vec::new(),
        }
    }

    /// The stream the relay binds to this exchange.
    pub fn stream(&self) -> String {
        format!("{}.log", self.name)
    }

    /// A queue bound with `#` and a consumer recording every delivery.
    pub async fn consume(&mut self) -> Deliveries {
        let queue = format!("{}.q{}", self.name, self.queues.len());
        let ch = self.conn.create_channel().await.expect("channel");
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
        ch.queue_bind(
            queue.as_str().into(),
            self.name.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
        ch.basic_qos(1000, BasicQosOptions::default()).await.expect("qos");
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        self.queues.push(queue);
        let out = Deliveries::default();
        let sink = out.clone();
        tokio::spawn(async move {
            let _keep = ch;
            while let Some(Ok(d)) = consumer.next().await {
                sink.0.lock().expect("deliveries").push(Received::of(&d));
            }
        });
        out
    }
}

impl Drop for TestExchange {
    fn drop(&mut self) {
        let mut queues = self.queues.clone();
        queues.push(self.stream());
        let exchange = self.name.clone();
        crate::run_aside(delete(exchange, queues));
    }
}

/// Deletes `queues` and `exchange` (missing ones are fine).
pub async fn delete(exchange: String, queues: Vec<String>) {
    let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await else {
        return;
    };
    for q in queues {
        // A failed delete closes the channel: one channel per object.
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
    }
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}
