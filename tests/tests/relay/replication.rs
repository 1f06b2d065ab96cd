//! `AMQP_REPLICATION_FACTOR` on the single local broker every other test uses: RabbitMQ caps
//! the factor at the cluster's size, so the default of 3 declares fine on one node; and queues
//! declared before the setting existed (without the argument) keep working: RabbitMQ refuses
//! to declare them again with it (406), so they are declared as they were, unchanged.

use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use ordering_platform::amqp::{Replication, declare_replicated};
use ordering_tests::read_app::local_broker;
use ordering_tests::relay::broker::{AMQP_URL, TestExchange, delete};

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn a_factor_of_3_declares_on_one_node_and_queues_declared_without_it_keep_working() {
    let ex = TestExchange::new().await;
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let fresh = format!("{}.fresh", ex.name);
    let old = format!("{}.projector", ex.name);
    let queues = vec![fresh.clone(), old.clone(), format!("{old}.dead"), ex.stream()];
    // Capped at the cluster's size (1 here): accepted, and declaring it again is a no-op.
    for _ in 0..2 {
        let r = declare_replicated(&conn, &fresh, &quorum(), "x-quorum-initial-group-size", 3).await;
        assert_eq!(r.expect("declare with a factor of 3 on one node"), Replication::Applied);
    }
    // A deployment from before the setting: the projector's queues and the stream as the
    // services declared them then, without the replication argument.
    let ch = conn.create_channel().await.expect("channel");
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(format!("{old}.dead").as_str().into(), durable, quorum())
        .await
        .expect("old dead-letter queue");
    let mut args = quorum();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{old}.dlx").as_str().into()),
    );
    ch.queue_declare(old.as_str().into(), durable, args.clone())
        .await
        .expect("old projector queue");
    let mut stream = FieldTable::default();
    stream.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    stream.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(5_000_000_000));
    stream.insert("x-max-age".into(), AMQPValue::LongString("7D".into()));
    ch.queue_declare(ex.stream().as_str().into(), durable, stream.clone())
        .await
        .expect("old stream");
    // RabbitMQ refuses the argument on them; the helper keeps them as they are.
    let r = declare_replicated(&conn, &old, &args, "x-quorum-initial-group-size", 3).await;
    assert_eq!(r.expect("an old queue is kept"), Replication::Existing);
    let r = declare_replicated(&conn, &ex.stream(), &stream, "x-initial-cluster-size", 3).await;
    assert_eq!(r.expect("an old stream is kept"), Replication::Existing);
    // The services' own declarations succeed over them.
    read_api::projector::declare(
        &conn,
        &ch,
        &read_api::projector::Topology {
            amqp_url: local_broker(),
            replication_factor: 3,
            exchange: ex.name.clone(),
            queue: old.clone(),
            prefetch: 1,
            workers: 1,
        },
    )
    .await
    .expect("the projector declares over queues from before the setting");
    outbox_relay::broker::declare(
        &conn,
        &ch,
        &outbox_relay::broker::Topology {
            exchange: ex.name.clone(),
            stream: ex.stream(),
            max_bytes: 5_000_000_000,
            max_age: "7D".into(),
            replication_factor: 3,
        },
    )
    .await
    .expect("the relay declares over a stream from before the setting");
    let _ = conn.close(200, "bye".into()).await;
    delete(format!("{old}.dlx"), queues).await;
}
