//! The in-process tier: entries kept in memory, sharded, bounded, and guarded by the floors
//! invalidations leave (so an entry older than an announced version can not be put back).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ordering_schema::events::AggregateType;
use uuid::Uuid;

use super::Entry;

const SHARDS: usize = 32;
const SHARD_CAPACITY: usize = 8192;

type Key = (AggregateType, Uuid);

struct LocalSlot {
    entry: Option<Entry>,
    /// No entry older than this may be stored (set by invalidations).
    floor: i64,
    expires: Instant,
}

/// One shard of the in-process tier.
struct Shard {
    slots: HashMap<Key, LocalSlot>,
    /// When the shard was last emptied (floors included): a fill whose read started before
    /// that may be older than a floor it can no longer see, so it is not stored.
    cleared: Instant,
}

impl Shard {
    /// Makes room in a full shard before `key` is added: expired slots go first (their
    /// floors no longer count), then all.
    fn make_room(&mut self, key: Key, now: Instant) {
        if self.slots.len() >= SHARD_CAPACITY && !self.slots.contains_key(&key) {
            self.slots.retain(|_, s| s.expires > now);
            if self.slots.len() >= SHARD_CAPACITY {
                self.slots.clear();
                self.cleared = now;
            }
        }
    }
}

/// The in-process tier.
pub(super) struct LocalTier {
    shards: Vec<Mutex<Shard>>,
    ttl: Duration,
}

impl LocalTier {
    /// An empty tier whose entries (and floors) live for `ttl`.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: HashMap::new(),
                        cleared: Instant::now(),
                    })
                })
                .collect(),
            ttl,
        }
    }

    fn shard(&self, aggregate: AggregateType, id: Uuid) -> &Mutex<Shard> {
        let h = id.as_u128() as usize ^ (aggregate as usize);
        &self.shards[h % SHARDS]
    }

    /// The entry of `aggregate`/`id` if any, and the floor below which none may be stored.
    pub(super) fn get(&self, aggregate: AggregateType, id: Uuid) -> (Option<Entry>, i64) {
        let Ok(shard) = self.shard(aggregate, id).lock() else {
            return (None, 0);
        };
        match shard.slots.get(&(aggregate, id)) {
            Some(slot) if slot.expires > Instant::now() => (slot.entry.clone(), slot.floor),
            _ => (None, 0),
        }
    }

    /// Stores `entry`, read at or after `read_since`, unless an entry as new or a floor above
    /// it is there, or the shard was emptied since.
    pub(super) fn put(&self, aggregate: AggregateType, id: Uuid, entry: &Entry, read_since: Instant) {
        let Ok(mut shard) = self.shard(aggregate, id).lock() else {
            return;
        };
        if read_since < shard.cleared {
            return;
        }
        let now = Instant::now();
        shard.make_room((aggregate, id), now);
        let expires = now + self.ttl;
        match shard.slots.get_mut(&(aggregate, id)) {
            Some(slot) if slot.expires > now => {
                let newer = slot.entry.as_ref().is_none_or(|e| e.version < entry.version);
                if entry.version >= slot.floor && newer {
                    slot.entry = Some(entry.clone());
                    slot.floor = entry.version;
                    slot.expires = expires;
                }
            }
            _ => {
                shard.slots.insert(
                    (aggregate, id),
                    LocalSlot {
                        entry: Some(entry.clone()),
                        floor: entry.version,
                        expires,
                    },
                );
            }
        }
    }

    /// A change to `version` was announced: drop older entries and refuse to store them again.
    pub(super) fn invalidate(&self, aggregate: AggregateType, id: Uuid, version: i64) {
        let Ok(mut shard) = self.shard(aggregate, id).lock() else {
            return;
        };
        let now = Instant::now();
        // Bounded like the entries: a floor dropped with a full shard is covered by the
        // shard's `cleared` time (fills that read before it are refused).
        shard.make_room((aggregate, id), now);
        let expires = now + self.ttl;
        let slot = shard.slots.entry((aggregate, id)).or_insert(LocalSlot {
            entry: None,
            floor: 0,
            expires,
        });
        if slot.entry.as_ref().is_some_and(|e| e.version < version) {
            slot.entry = None;
        }
        if slot.floor < version {
            slot.floor = version;
        }
        slot.expires = expires;
    }

    /// Forgets every entry and floor.
    pub(super) fn clear(&self) {
        for shard in &self.shards {
            if let Ok(mut s) = shard.lock() {
                s.slots.clear();
                s.cleared = Instant::now();
            }
        }
    }
}
