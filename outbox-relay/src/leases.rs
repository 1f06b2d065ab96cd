//! Partition leases: which instance publishes which aggregates.
//!
//! Aggregates are hashed into `RELAY_PARTITIONS` partitions; each partition is a row of
//! `<table>_relay_leases` with an owner, an expiry and a fence (incremented on every change of
//! owner). Every `ttl/3` each instance renews its leases, counts the live instances
//! (`<table>_relay_instances`), claims free or expired partitions up to its fair share and
//! gives back what it holds beyond it, so partitions re-balance when instances come and go,
//! and a dead instance's partitions are taken over once its leases expire.
//!
//! Fencing: an instance publishes a partition's rows only while its local deadline for the
//! lease has not passed, and that deadline is computed from an instant taken *before* the
//! renewal was sent, minus a margin, so it always ends before the expiry PostgreSQL recorded:
//! a stale owner stops publishing before anyone else can claim. Marking rows sent also checks
//! the fence in SQL, so a stale owner cannot record anything after losing the lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};
use ordering_platform::breaker::Breaker;

#[derive(Clone, Copy, Debug)]
struct Held {
    fence: i64,
    valid_until: Instant,
}

/// The partitions this instance holds, shared by the lease keeper and the publisher.
#[derive(Debug)]
pub struct Leases {
    owner: uuid::Uuid,
    partitions: i32,
    held: Mutex<HashMap<i32, Held>>,
}

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    fence: i64,
}

#[derive(QueryableByName)]
struct Live {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Leases {
    /// No partitions held yet; `owner` is this instance's id.
    pub fn new(owner: uuid::Uuid, partitions: i32) -> Self {
        Self {
            owner,
            partitions,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// This instance's id.
    pub fn owner(&self) -> uuid::Uuid {
        self.owner
    }

    /// Who this instance is and which partitions it may publish now, in words:
    /// `instance <id> holds 3 of 16 partitions: 0, 1, 2` (no list when it holds none).
    pub fn describe(&self) -> String {
        let held: Vec<String> = self.snapshot().iter().map(|(p, _)| p.to_string()).collect();
        let mut s = format!(
            "instance {} holds {} of {} partitions",
            self.owner,
            held.len(),
            self.partitions
        );
        if !held.is_empty() {
            s.push_str(": ");
            s.push_str(&held.join(", "));
        }
        s
    }

    /// The partitions that may be published now, with the fence of each.
    pub fn snapshot(&self) -> Vec<(i32, i64)> {
        let now = Instant::now();
        let mut v: Vec<(i32, i64)> = self
            .lock()
            .iter()
            .filter(|(_, h)| h.valid_until > now)
            .map(|(p, h)| (*p, h.fence))
            .collect();
        v.sort_unstable();
        v
    }

    /// May a row of `partition`, read under `fence`, be published now?
    pub fn valid(&self, partition: i32, fence: i64) -> bool {
        self.lock()
            .get(&partition)
            .is_some_and(|h| h.fence == fence && h.valid_until > Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews, claims and gives back leases once. `releasing` carries the partitions given up
    /// at the previous tick: they were withdrawn from the publisher then, and are released in
    /// the database now, so that nothing this instance published can race the next owner.
    async fn tick(&self, store: &Store, ttl: Duration, releasing: &mut Vec<i32>) -> Result<(), StoreError> {
        let names = store.names();
        let leases = names.object("leases");
        let instances = names.object("instances");
        let ttl_s = ttl.as_secs_f64();
        let started = Instant::now();
        let mut c = store.conn().await?;
        diesel::sql_query(format!(
            "INSERT INTO {instances} (id, seen_at) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()"
        ))
        .bind::<SqlUuid, _>(self.owner)
        .execute(&mut c)
        .await?;
        diesel::sql_query(format!(
            "DELETE FROM {instances} WHERE seen_at < now() - make_interval(secs => $1 * 10)"
        ))
        .bind::<Double, _>(ttl_s)
        .execute(&mut c)
        .await?;
        let live: Live = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {instances} WHERE seen_at > now() - make_interval(secs => $1)"
        ))
        .bind::<Double, _>(ttl_s)
        .get_result(&mut c)
        .await?;
        if !releasing.is_empty() {
            diesel::sql_query(format!(
                "UPDATE {leases} SET owner = NULL, expires_at = '-infinity' WHERE owner = $1 AND partition = ANY($2)"
            ))
            .bind::<SqlUuid, _>(self.owner)
            .bind::<Array<Integer>, _>(&*releasing)
            .execute(&mut c)
            .await?;
            tracing::info!(partitions = ?releasing, "released partitions for re-balancing");
            releasing.clear();
        }
        let mut mine: Vec<LeaseRow> = diesel::sql_query(format!(
            "UPDATE {leases} SET expires_at = now() + make_interval(secs => $2) \
             WHERE owner = $1 AND expires_at > now() RETURNING partition, fence"
        ))
        .bind::<SqlUuid, _>(self.owner)
        .bind::<Double, _>(ttl_s)
        .load(&mut c)
        .await?;
        let live = live.n.max(1);
        let fair = ((i64::from(self.partitions) + live - 1) / live) as usize;
        if mine.len() < fair {
            let claimed: Vec<LeaseRow> = diesel::sql_query(format!(
                "UPDATE {leases} l SET owner = $1, fence = l.fence + 1, expires_at = now() + make_interval(secs => $2) \
                 WHERE l.partition IN (SELECT partition FROM {leases} WHERE owner IS NULL OR expires_at <= now() \
                                       ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING l.partition, l.fence"
            ))
            .bind::<SqlUuid, _>(self.owner)
            .bind::<Double, _>(ttl_s)
            .bind::<BigInt, _>((fair - mine.len()) as i64)
            .load(&mut c)
            .await?;
            if !claimed.is_empty() {
                tracing::info!(partitions = ?claimed.iter().map(|l| l.partition).collect::<Vec<_>>(), "claimed partitions");
            }
            mine.extend(claimed);
        } else if mine.len() > fair {
            mine.sort_unstable_by_key(|l| l.partition);
            releasing.extend(mine.drain(fair..).map(|l| l.partition));
        }
        // The local deadline starts before the renewal was sent and keeps a margin, so it
        // ends before the expiry the database recorded.
        let valid_until = started + ttl - ttl / 10;
        let mut held = self.lock();
        held.clear();
        for l in &mine {
            held.insert(
                l.partition,
                Held {
                    fence: l.fence,
                    valid_until,
                },
            );
        }
        metrics::gauge!("relay_partitions_held").set(held.len() as f64);
        Ok(())
    }

    /// Gives every lease back and leaves the instance list, so others take over at once.
    pub async fn release_all(&self, store: &Store) -> Result<(), StoreError> {
        self.lock().clear();
        metrics::gauge!("relay_partitions_held").set(0.0);
        let names = store.names();
        let mut c = store.conn().await?;
        diesel::sql_query(format!(
            "UPDATE {} SET owner = NULL, expires_at = '-infinity' WHERE owner = $1",
            names.object("leases")
        ))
        .bind::<SqlUuid, _>(self.owner)
        .execute(&mut c)
        .await?;
        diesel::sql_query(format!("DELETE FROM {} WHERE id = $1", names.object("instances")))
            .bind::<SqlUuid, _>(self.owner)
            .execute(&mut c)
            .await?;
        Ok(())
    }
}

/// One partition's lease as the admin page shows it.
#[derive(Clone, Debug, QueryableByName)]
pub struct LeaseView {
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// The instance holding it; `None` when it is free or its lease expired.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub owner: Option<uuid::Uuid>,
    #[diesel(sql_type = BigInt)]
    pub fence: i64,
}

/// Every partition's lease, by partition, as the database has it now.
pub async fn table(store: &Store) -> Result<Vec<LeaseView>, StoreError> {
    let mut c = store.conn().await?;
    Ok(diesel::sql_query(format!(
        "SELECT partition, CASE WHEN expires_at > now() THEN owner END AS owner, fence FROM {} ORDER BY partition",
        store.names().object("leases")
    ))
    .load(&mut c)
    .await?)
}

/// Keeps this instance's leases until `stop` is cancelled. Each tick also wakes the
/// publisher when new partitions were claimed.
pub async fn keep(
    leases: Arc<Leases>,
    store: Store,
    ttl: Duration,
    db: Arc<Breaker>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut releasing = Vec::new();
    let mut interval = tokio::time::interval(ttl / 3);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        let before = leases.snapshot().len();
        match tokio::time::timeout(ttl / 2, leases.tick(&store, ttl, &mut releasing)).await {
            Ok(Ok(())) => {
                db.success();
                if leases.snapshot().len() > before {
                    wake.notify_one();
                }
            }
            Ok(Err(e)) => {
                db.failure();
                tracing::warn!(error = %e, "cannot renew partition leases");
            }
            Err(_) => {
                db.failure();
                tracing::warn!("renewing partition leases timed out");
            }
        }
    }
}
