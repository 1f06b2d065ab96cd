//! The sweep: every few seconds, applies parked events whose gap is filled (should the
//! transaction that filled it not have seen them), and gives up on gaps older than
//! `GAP_TIMEOUT`: their parked events are published to the dead-letter queue, with a header
//! saying why, and removed from the parking, in one transaction under their aggregates'
//! locks (published first, with confirms: a failure leaves them parked; a crash between the
//! confirms and the commit leaves copies in both places, which a replay turns into no-ops).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel_async::AsyncConnection;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetters;
use super::parking::{self, Parked};
use super::worker::Changes;
use super::{Key, Projector};

/// The most aggregates one sweep step handles.
const SWEEP_KEYS: i64 = 512;

/// How long readiness names a gap that timed out.
pub const GAP_REPORT_FOR: Duration = Duration::from_secs(15 * 60);

/// Gaps that timed out lately, for readiness and the metrics.
#[derive(Default)]
pub struct GapReport {
    last: Mutex<Option<TimedOut>>,
}

struct TimedOut {
    gaps: u64,
    events: u64,
    at: Instant,
    example: String,
}

impl GapReport {
    fn record(&self, gaps: u64, events: u64, example: String) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (gaps, events) = match last.as_ref() {
            Some(t) if t.at.elapsed() < GAP_REPORT_FOR => (t.gaps + gaps, t.events + events),
            _ => (gaps, events),
        };
        *last = Some(TimedOut {
            gaps,
            events,
            at: Instant::now(),
            example,
        });
    }

    /// Gaps timed out within [`GAP_REPORT_FOR`].
    fn recent(&self) -> u64 {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref()
            .filter(|t| t.at.elapsed() < GAP_REPORT_FOR)
            .map_or(0, |t| t.gaps)
    }

    /// What readiness says, if a gap timed out within [`GAP_REPORT_FOR`].
    pub fn detail(&self, dead_letter_queue: &str) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = last.as_ref().filter(|t| t.at.elapsed() < GAP_REPORT_FOR)?;
        Some(format!(
            "{} gap(s) timed out in the last {} min ({} parked event(s) moved to {dead_letter_queue}; last: {}, {} s ago): \
             their predecessors never arrived. If this instance started on an empty view database while the \
             stream has history, run `read-api rebuild`",
            t.gaps,
            GAP_REPORT_FOR.as_secs() / 60,
            t.events,
            t.example,
            t.at.elapsed().as_secs()
        ))
    }
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error(transparent)]
    Commit(#[from] super::failure::CommitError),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    DeadLetter(#[from] super::dead_letter::DeadLetterError),
}

impl Projector {
    /// Sweeps until `stop`, publishing timed-out parked events to `dead_letters` and counting the dead-letter queue's messages on `counting`.
    pub(super) async fn sweeper(self, dead_letters: DeadLetters, counting: Channel, stop: CancellationToken) {
        let every = (self.gap_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.apply_ready(&stop).await {
                tracing::warn!(error = %e, "projector sweep: applying parked events failed");
            }
            if let Err(e) = self.expire(&dead_letters).await {
                tracing::warn!(error = %e, "projector sweep: dead-lettering timed-out gaps failed");
            }
            match self.pool.get().await {
                Ok(mut conn) => match parking::count(&mut conn).await {
                    Ok((events, gaps)) => {
                        self.metrics.parked.set(events as f64);
                        self.metrics.gaps_open.set(gaps as f64);
                    }
                    Err(e) => tracing::warn!(error = %e, "projector sweep: counting parked events failed"),
                },
                Err(e) => tracing::warn!(error = %e, "projector sweep: no database connection"),
            }
            self.metrics.gaps_timed_out.set(self.gap_report.recent() as f64);
            if counting.status().connected() {
                // Bounded: the session waits for the sweep before it reconnects.
                match super::within_broker_timeout("dead-letter count", self.dead_letter_count(&counting)).await {
                    Some(Ok(n)) => self.metrics.dead_letters.set(f64::from(n)),
                    Some(Err(e)) => tracing::warn!(error = %e, "projector sweep: counting dead letters failed"),
                    None => {}
                }
            }
        }
    }

    /// The messages in the dead-letter queue (a passive declare: it reads, never creates).
    async fn dead_letter_count(&self, counting: &Channel) -> Result<u32, lapin::Error> {
        let queue = counting
            .queue_declare(
                self.topology.dead_letter_queue().as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }

    /// Applies parked events whose predecessor is applied.
    async fn apply_ready(&self, stop: &CancellationToken) -> Result<(), SweepError> {
        let keys = {
            let mut conn = self.pool.get().await.map_err(super::failure::CommitError::from)?;
            parking::ready_keys(&mut conn, SWEEP_KEYS).await?
        };
        if keys.is_empty() {
            return Ok(());
        }
        let Some(committed) = self.commit_retrying(&[], &keys, stop).await else {
            return Ok(());
        };
        let mut changes = Changes::default();
        for (event, outcome) in committed?.drained {
            self.record(&mut changes, &event, outcome);
        }
        self.publish(changes).await;
        Ok(())
    }

    /// Moves the parked events of gaps older than `GAP_TIMEOUT` to the dead-letter queue.
    async fn expire(&self, dead_letters: &DeadLetters) -> Result<(), SweepError> {
        let timeout = self.gap_timeout.as_secs_f64();
        let mut conn = self.pool.get().await.map_err(super::failure::CommitError::from)?;
        let keys = parking::expired_keys(&mut conn, timeout, SWEEP_KEYS).await?;
        if keys.is_empty() {
            return Ok(());
        }
        let moved = conn
            .transaction::<_, SweepError, _>(async |conn| {
                parking::lock(conn, &keys).await?;
                let rows = parking::of_expired(conn, &keys, timeout).await?;
                let reasons: Vec<String> = rows.iter().map(gap_reason).collect();
                let confirms = futures::future::join_all(
                    rows.iter()
                        .zip(&reasons)
                        .map(|(r, why)| dead_letters.publish(&r.routing_key, &r.body, why)),
                )
                .await;
                for c in confirms {
                    c?;
                }
                let refs: Vec<&Parked> = rows.iter().collect();
                parking::remove(conn, &refs).await?;
                Ok(rows)
            })
            .await?;
        let Some(first) = moved.first() else {
            return Ok(());
        };
        let mut gaps: Vec<Key> = moved
            .iter()
            .filter_map(|r| ordering_schema::events::AggregateType::parse(&r.aggregate).map(|a| (a, r.id)))
            .collect();
        gaps.dedup();
        let example = format!(
            "{} {} at version {}, parked from version {}",
            first.aggregate, first.id, first.have, first.sequence
        );
        tracing::warn!(
            gaps = gaps.len(),
            events = moved.len(),
            dead_letter_queue = %self.topology.dead_letter_queue(),
            example,
            "gaps older than GAP_TIMEOUT: their parked events moved to the dead-letter queue. If this instance \
             started on an empty view database while the stream has history, run `read-api rebuild`"
        );
        self.metrics.timed_out.increment(moved.len() as u64);
        self.gap_report.record(gaps.len() as u64, moved.len() as u64, example);
        Ok(())
    }
}

/// Why a parked event went to the dead-letter queue.
fn gap_reason(r: &Parked) -> String {
    format!(
        "gap timeout: {} {} stayed at version {} while this event (version {}) was parked since {}",
        r.aggregate,
        r.id,
        r.have,
        r.sequence,
        r.parked_at.to_rfc3339()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_gaps_and_what_to_do() {
        let report = GapReport::default();
        assert_eq!(report.detail("q.dead"), None);
        report.record(2, 5, "product 1 at version 0".into());
        report.record(1, 1, "order 2 at version 3".into());
        let detail = report.detail("q.dead").unwrap();
        assert!(detail.starts_with("3 gap(s) timed out"), "{detail}");
        assert!(detail.contains("6 parked event(s) moved to q.dead"), "{detail}");
        assert!(detail.contains("order 2 at version 3"), "{detail}");
        assert!(detail.contains("read-api rebuild"), "{detail}");
        assert_eq!(report.recent(), 3);
    }
}
