//! Customer lists and summaries: one Redis hash per customer, stamped with the customer's
//! revision (bumped by every order event of theirs in the same statement as the view
//! change): a fill for an older revision is refused and a newer revision empties the hash.

use bytes::Bytes;
use uuid::Uuid;

use super::Cache;
use super::pending::Pending;

impl Cache {
    /// The Redis key of a customer's lists and summary.
    pub fn customer_key(&self, customer: Uuid) -> String {
        format!("{}c:{customer}", self.inner.prefix)
    }

    /// The customer's cached answer `field` (a list query or `summary`), as of the revision the
    /// hash is stamped with.
    pub async fn customer_get(&self, customer: Uuid, field: &str) -> Option<(i64, Bytes)> {
        let key = self.customer_key(customer);
        match self.inner.redis.hash_get(&key, field).await {
            Some((Some(rev), Some(body))) => {
                self.inner.hits_redis.increment();
                Some((rev, Bytes::from(body)))
            }
            _ => {
                self.inner.misses.increment();
                None
            }
        }
    }

    /// Stores the customer's answer `field` computed at `revision` (refused if the hash is at
    /// a newer revision).
    pub async fn customer_fill(&self, customer: Uuid, revision: i64, field: &str, body: &[u8]) {
        let key = self.customer_key(customer);
        self.inner.redis.hash_fill(&key, revision, field, body).await;
    }

    /// The projector committed an order event of `customer`, who is now at `revision`.
    pub async fn publish_customer(&self, customer: Uuid, revision: i64) {
        let key = self.customer_key(customer);
        if !self.inner.redis.hash_bump(&key, revision).await {
            self.inner.pending.remember(Pending::Bump { key, revision });
        }
    }

    /// [`Self::publish_customer`] for many customers at once, all in flight together.
    pub async fn publish_customers(&self, customers: Vec<(Uuid, i64)>) {
        let writes = customers
            .into_iter()
            .map(|(customer, revision)| self.publish_customer(customer, revision));
        futures::future::join_all(writes).await;
    }
}
