//! Giving up on a message: it goes to `<queue>.dead` with a header saying why, so `read-api
//! dlq` and the admin page show the parse error or the database's refusal, not only "rejected".
//!
//! The message is published to the dead-letter exchange (confirmed) and only then
//! acknowledged. Should the publish fail, it is rejected without requeue instead, and the
//! broker dead-letters it by itself (without the reason). Either way it leaves the queue
//! and nothing waits for it; a crash between the confirm and the ack leaves it in both places,
//! and a replay of an event already applied changes nothing.

use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};

/// The header a message the projector gave up on carries in the dead-letter queue.
pub const REASON_HEADER: &str = "x-read-api-dead-letter-reason";

/// The longest reason kept: errors can quote whole payloads.
const REASON_MAX: usize = 2000;

/// Why publishing a dead letter failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing to the dead-letter exchange: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused a dead letter")]
    Nacked,
    #[error("the broker did not confirm a dead letter within {0:?}")]
    NoAnswer(std::time::Duration),
}

/// Where given-up messages are published: a channel in confirm mode and the dead-letter
/// exchange (`<queue>.dlx`, a fanout into `<queue>.dead`).
#[derive(Clone)]
pub struct DeadLetters {
    pub channel: Channel,
    pub exchange: String,
}

impl DeadLetters {
    /// Publishes `body` (first published with `routing_key`) with `reason` and waits for the
    /// broker's confirm, at most [`BROKER_TIMEOUT`](super::BROKER_TIMEOUT): the sweep publishes
    /// inside the transaction that holds the aggregates' locks, and a broker that does not
    /// answer must not hold them (and the workers waiting on them) until the heartbeat gives
    /// up. A confirm that comes after the timeout leaves a second copy in the dead letters at
    /// the next try, never a lost one.
    /// The message's timestamp is the time it was given up.
    pub async fn publish(&self, routing_key: &str, body: &[u8], reason: &str) -> Result<(), DeadLetterError> {
        let mut reason = reason.to_owned();
        if reason.len() > REASON_MAX {
            let mut cut = REASON_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ordering_schema::events::MESSAGE_CONTENT_TYPE.into())
            .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or_default())
            .with_headers(headers);
        let confirmed = async {
            self.channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?
                .await
        };
        let confirm = tokio::time::timeout(super::BROKER_TIMEOUT, confirmed)
            .await
            .map_err(|_| DeadLetterError::NoAnswer(super::BROKER_TIMEOUT))??;
        if confirm.is_nack() {
            return Err(DeadLetterError::Nacked);
        }
        Ok(())
    }

    /// Gives up on a delivery: published with `reason`, then acknowledged; rejected without
    /// requeue (the broker dead-letters it) if the publish fails.
    pub async fn give_up(&self, acker: &Acker, routing_key: &str, body: &[u8], reason: &str) {
        super::within_broker_timeout("dead letter", self.give_up_unbounded(acker, routing_key, body, reason)).await;
    }

    async fn give_up_unbounded(&self, acker: &Acker, routing_key: &str, body: &[u8], reason: &str) {
        match self.publish(routing_key, body, reason).await {
            Ok(()) => {
                let _ = acker.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not published with its reason; rejecting it instead");
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await;
            }
        }
    }
}
