//! Single views (a product, an order): read through both tiers with single flight on
//! misses, and published by the projector.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use ordering_schema::events::AggregateType;
use uuid::Uuid;

use super::pending::Pending;
use super::{Cache, Entry, LoadError, Source};
use crate::views::StoredView;

/// A miss being served: concurrent misses of one key await the same one.
pub(super) type Flight = Shared<BoxFuture<'static, Result<(Option<Entry>, Source), LoadError>>>;

impl Cache {
    /// The view `aggregate`/`id` at `min_version` or later: from the in-process tier, Redis,
    /// or `load` (PostgreSQL), filling the tiers on the way back. `Ok((None, _))`: no such view.
    pub async fn view<L, Fut>(
        &self,
        aggregate: AggregateType,
        id: Uuid,
        min_version: i64,
        load: L,
    ) -> Result<(Option<Entry>, Source), LoadError>
    where
        L: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<StoredView>, LoadError>> + Send + 'static,
    {
        let (local, floor) = self.inner.local.get(aggregate, id);
        if let Some(e) = local
            && e.version >= min_version
        {
            self.inner.hits_local.increment();
            return Ok((Some(e), Source::Hit));
        }
        // Boxed: the hot path above keeps the caller's future small.
        Box::pin(self.view_from_tiers(aggregate, id, min_version, floor, load)).await
    }

    /// The view `aggregate`/`id` at `min_version` or later if either tier holds it, without
    /// reading PostgreSQL (for when PostgreSQL can not answer).
    pub async fn cached_view(&self, aggregate: AggregateType, id: Uuid, min_version: i64) -> Option<Entry> {
        let (local, floor) = self.inner.local.get(aggregate, id);
        if let Some(e) = local
            && e.version >= min_version
        {
            self.inner.hits_local.increment();
            return Some(e);
        }
        let since = Instant::now();
        let raw = self.inner.redis.get(&self.view_key(aggregate, id)).await??;
        let e = Entry::decode(&raw).filter(|e| e.version >= min_version.max(floor))?;
        self.inner.hits_redis.increment();
        self.inner.local.put(aggregate, id, &e, since);
        Some(e)
    }

    /// [`Self::view`] past the in-process tier: Redis, then PostgreSQL, single flight.
    async fn view_from_tiers<L, Fut>(
        &self,
        aggregate: AggregateType,
        id: Uuid,
        min_version: i64,
        floor: i64,
        load: L,
    ) -> Result<(Option<Entry>, Source), LoadError>
    where
        L: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<StoredView>, LoadError>> + Send + 'static,
    {
        let key = self.view_key(aggregate, id);
        let need = min_version.max(floor);
        let flight = {
            let Ok(mut flights) = self.inner.flights.lock() else {
                return Err(LoadError::LockPoisoned);
            };
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let k = key.clone();
                    let load = load.clone();
                    let f = async move {
                        let out = me.fetch(aggregate, id, &k, need, load).await;
                        if let Ok(mut flights) = me.inner.flights.lock() {
                            flights.remove(&k);
                        }
                        out
                    }
                    .boxed()
                    .shared();
                    flights.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let out = flight.await?;
        match &out.0 {
            // A flight started for a lower requirement may bring an older version than this
            // request needs: read PostgreSQL directly then.
            Some(e) if e.version < min_version => self.fetch(aggregate, id, &key, min_version, load).await,
            _ => Ok(out),
        }
    }

    async fn fetch<L, Fut>(
        &self,
        aggregate: AggregateType,
        id: Uuid,
        key: &str,
        need: i64,
        load: L,
    ) -> Result<(Option<Entry>, Source), LoadError>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<StoredView>, LoadError>>,
    {
        let since = Instant::now();
        if let Some(Some(raw)) = self.inner.redis.get(key).await
            && let Some(e) = Entry::decode(&raw)
            && e.version >= need
        {
            self.inner.hits_redis.increment();
            self.inner.local.put(aggregate, id, &e, since);
            return Ok((Some(e), Source::Hit));
        }
        self.inner.misses.increment();
        let Some(view) = load().await? else {
            return Ok((None, Source::Miss));
        };
        let entry = Entry::from_view(view);
        self.inner.local.put(aggregate, id, &entry, since);
        self.inner.redis.set_if_newer(key, entry.version, &entry.encode()).await;
        Ok((Some(entry), Source::Miss))
    }

    /// The projector committed `view` of `aggregate`/`id`: store it in both tiers (never over
    /// a newer one). A Redis failure is remembered and retried.
    pub async fn publish_view(&self, aggregate: AggregateType, id: Uuid, view: StoredView) {
        let entry = Entry::from_view(view);
        self.inner.local.put(aggregate, id, &entry, Instant::now());
        let key = self.view_key(aggregate, id);
        let value = entry.encode();
        if !self.inner.redis.set_if_newer(&key, entry.version, &value).await {
            self.inner.pending.remember(Pending::SetView {
                key,
                version: entry.version,
                value,
            });
        }
    }

    /// [`Self::publish_view`] for many views at once: the Redis writes are all in flight
    /// together (one round trip's wait, not one per view).
    pub async fn publish_views(&self, views: Vec<(AggregateType, Uuid, StoredView)>) {
        let writes = views
            .into_iter()
            .map(|(aggregate, id, view)| self.publish_view(aggregate, id, view));
        futures::future::join_all(writes).await;
    }

    /// A change to `version` was announced: drop older in-process entries and refuse to store
    /// them again.
    pub fn invalidate_local(&self, aggregate: AggregateType, id: Uuid, version: i64) {
        self.inner.local.invalidate(aggregate, id, version);
    }

    /// The raw Redis value of a view key (tests).
    pub async fn raw_view(&self, aggregate: AggregateType, id: Uuid) -> Option<(i64, Bytes)> {
        let raw = self.inner.redis.get_unguarded(&self.view_key(aggregate, id)).await?;
        Entry::decode(&raw).map(|e| (e.version, e.body))
    }
}
