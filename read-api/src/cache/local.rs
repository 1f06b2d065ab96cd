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
    /// When expired slots were last swept out.
    swept: Instant,
}

impl Shard {
    /// Makes room in a full shard before `key` is added: expired slots go first (their
    /// floors no longer count), then all. Expired slots also go once every `ttl` whether the
    /// shard is full or not: neither their entries nor their floors count any more, and kept
    /// until the shard fills they made a read-api that writes more than it reads (every event
    /// leaves a floor) grow to the tier's bound, 256k slots, and stay there.
    fn make_room(&mut self, key: Key, now: Instant, ttl: Duration) {
        if now.duration_since(self.swept) >= ttl {
            self.slots.retain(|_, s| s.expires > now);
            self.swept = now;
        }
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
                        swept: Instant::now(),
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
        shard.make_room((aggregate, id), now, self.ttl);
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
        shard.make_room((aggregate, id), now, self.ttl);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: i64) -> Entry {
        Entry {
            version,
            owner: None,
            body: bytes::Bytes::from_static(b"{}"),
            etag: axum::http::HeaderValue::from_static("\"1\""),
        }
    }

    fn slots(tier: &LocalTier) -> usize {
        tier.shards.iter().map(|s| s.lock().unwrap().slots.len()).sum()
    }

    #[test]
    fn expired_slots_are_swept_once_a_ttl_without_waiting_for_the_shard_to_fill() {
        // A TTL long enough that the touches below stay well within it on a busy machine.
        let tier = LocalTier::new(Duration::from_millis(500));
        let old: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        for id in &old {
            tier.invalidate(AggregateType::Order, *id, 1);
        }
        assert_eq!(slots(&tier), 200);
        std::thread::sleep(Duration::from_millis(600));
        // One more touch per shard sweeps it: what expired goes, though no shard is full.
        let mut kept = Vec::new();
        let mut touched = std::collections::HashSet::new();
        while touched.len() < SHARDS {
            let id = Uuid::new_v4();
            tier.put(AggregateType::Order, id, &entry(1), Instant::now());
            touched.insert((id.as_u128() as usize ^ AggregateType::Order as usize) % SHARDS);
            kept.push(id);
        }
        let held = |id: &Uuid| {
            tier.shard(AggregateType::Order, *id)
                .lock()
                .unwrap()
                .slots
                .contains_key(&(AggregateType::Order, *id))
        };
        assert!(!old.iter().any(held), "an expired slot survived its shard's sweep");
        assert!(kept.iter().all(held));
        // What was put is still served.
        assert_eq!(tier.get(AggregateType::Order, kept[0]).0.map(|e| e.version), Some(1));
    }
}
