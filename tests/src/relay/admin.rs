//! A relay with its admin page on and dead letters waiting, for the admin page's tests: events
//! published where no queue takes them (the stream's binding removed), so the broker returns
//! them and, with one attempt allowed, they are dead-lettered at once. Binding any queue for
//! their routing key is the fix.

use std::time::Duration;

use lapin::types::FieldTable;

use crate::process::ServiceProcess;
use crate::relay::broker::{AMQP_URL, Deliveries, TestExchange};
use crate::relay::outbox::insert_events;
use crate::relay::process::{RelayEnv, relay_command, spawn_relay};
use crate::relay::wait_until;
use crate::test_db::TestDatabase;
use crate::write_app::SECRET;

const WAIT: Duration = Duration::from_secs(30);

/// One dead letter, as `outbox-relay dlq list --json` prints it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Letter {
    pub outbox_id: i64,
    pub event_id: uuid::Uuid,
}

/// A relay (`JWT_SECRET` = the tests' secret) whose first events are dead letters.
pub struct PoisonedRelay {
    pub db: TestDatabase,
    pub exchange: TestExchange,
    pub env: RelayEnv,
    pub relay: ServiceProcess,
    /// The dead letters, oldest first.
    pub letters: Vec<Letter>,
}

impl PoisonedRelay {
    /// Starts the relay, removes its stream's binding and waits until `events` events (of as
    /// many aggregates) are dead letters.
    pub async fn start(events: i32) -> Self {
        let db = TestDatabase::new().await;
        let exchange = TestExchange::new().await;
        let env = RelayEnv::new(db.url(), &exchange.name)
            .set("RELAY_MAX_ATTEMPTS", "1")
            .set("JWT_SECRET", SECRET);
        let relay = spawn_relay(&env);
        relay.wait_ready_status(200, WAIT).await;
        let broker = lapin::Connection::connect(AMQP_URL, Default::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = broker.create_channel().await.expect("channel");
        ch.queue_unbind(
            exchange.stream().as_str().into(),
            exchange.name.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind the stream");
        let _ = broker.close(200, "bye".into()).await;
        insert_events(&mut db.conn().await, "outbox", "poison-", events, 1, 1, 10).await;
        let mut s = Self {
            db,
            exchange,
            env,
            relay,
            letters: Vec::new(),
        };
        wait_until("the events to be dead letters", WAIT, || async {
            s.dead_letters().len() == events as usize
        })
        .await;
        s.letters = s.dead_letters();
        s
    }

    /// The dead letters now, from the CLI.
    pub fn dead_letters(&self) -> Vec<Letter> {
        let out = relay_command(&self.env, &["dlq", "list", "--json"])
            .output()
            .expect("run outbox-relay dlq list");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a dead letter as JSON"))
            .collect()
    }

    /// Fixes the cause: a queue bound for every routing key, whose deliveries are returned.
    pub async fn fix(&mut self) -> Deliveries {
        self.exchange.consume().await
    }
}
