//! `read-api rebuild`: replays the event stream from its first offset into fresh view tables
//! and swaps them in atomically.
//!
//! The replay applies events with the projector's own code ([`crate::projector::apply`]) into
//! `rv_*_rebuild`, so the result is what the live projector builds. When the stream has been
//! idle for a moment the replay is caught up, provided it reached as far as the stream held when
//! the rebuild started (a broker that stalls mid-replay is refused, the views left alone);
//! then, in one transaction holding the live tables' locks (the live projector waits a few
//! milliseconds), the rows the live projector applied while the rebuild ran are carried over
//! where they are newer, the tables are renamed, the old ones dropped, and a `rebuilt`
//! announcement makes every instance forget its in-process cache. The Redis entries under the
//! key prefix are deleted afterwards.
//!
//! "While the rebuild ran" is told by the rows' `applied` numbers (drawn from `rv_applied_seq`
//! by every write, see [`crate::views`]): the rebuild draws one when it starts, and carries
//! over only live rows with a higher one. A live row applied before the start came from an
//! event the stream already held, so the replay rebuilds it, unless the stream never had that
//! event (a message published to the projector's queue by someone else): such views are
//! dropped by the first rebuild that starts after them. The result is exactly the stream's
//! projection plus what the live projector applied during the rebuild.
//!
//! If retention dropped the stream's head (its first offset is not 0, or an aggregate's first
//! event is not its version 1), the rebuild refuses unless told `--from-available`.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::announcement::{Announcement, NOTIFY_CHANNEL};
use crate::cache::Cache;
use crate::error::ErrorChain;
use crate::projector::{self, Parsed};
use crate::views::{Continuity, Outcome, Tables};

/// How a rebuild runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub database_url: String,
    pub amqp_url: ordering_platform::amqp::AmqpNodes,
    pub stream: String,
    /// Accept a stream whose head was dropped by retention.
    pub from_available: bool,
    /// The replay is caught up once no event arrived for this long.
    pub idle: Duration,
}

/// Progress, reported about once a second.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub events: u64,
    pub offset: i64,
    /// Messages in the stream when the rebuild started, if the broker said.
    pub total: Option<u64>,
    pub per_second: f64,
}

/// What a finished rebuild did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    pub events: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub unknown: u64,
    pub poison: u64,
    pub cache_keys_dropped: u64,
}

/// Why a rebuild stopped without swapping anything in.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migrating: {0}")]
    Migrate(#[from] ordering_schema::migrate::MigrateError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    BrokerConnect(#[from] ordering_platform::amqp::ConnectError),
    #[error(
        "the stream {stream} no longer holds the pipeline's first events ({detail}); \
         rebuilding from it would lose history. Run `read-api rebuild --from-available` to \
         rebuild from what it still holds"
    )]
    HeadMissing { stream: String, detail: String },
    #[error(
        "the stream {stream} counts {held} events but delivered none within {waited:?}; the \
         views were left as they were. Run the rebuild again once the broker delivers"
    )]
    NoDelivery {
        stream: String,
        held: u64,
        waited: Duration,
    },
    #[error(
        "the replay of {stream} went quiet for {idle:?} after {events} events (the last at \
         offset {reached}), short of offset {tail}, which the stream held when the rebuild \
         started; the views were left as they were. Run the rebuild again once the broker delivers"
    )]
    Incomplete {
        stream: String,
        /// Events replayed.
        events: u64,
        /// The last offset replayed (-1: none).
        reached: i64,
        /// The first offset of the stream's last chunk when the rebuild started.
        tail: i64,
        idle: Duration,
    },
}

fn offset_of(props: &lapin::BasicProperties) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// How long the rebuild waits for the stream's last chunk before taking the stream for empty.
const TAIL_WAIT: Duration = Duration::from_secs(10);

/// A consumer of `stream` on a channel of its own, from `offset` (`first`, `last`, ...), with
/// `prefetch` unacknowledged deliveries.
async fn consume_stream(
    amqp: &lapin::Connection,
    stream: &str,
    offset: &str,
    prefetch: u16,
    tag: &str,
) -> Result<(lapin::Channel, lapin::Consumer), RebuildError> {
    let ch = amqp.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), AMQPValue::LongString(offset.into()));
    let consumer = ch
        .basic_consume(stream.into(), tag.into(), BasicConsumeOptions::default(), args)
        .await?;
    Ok((ch, consumer))
}

/// The first offset of `stream`'s last chunk (`None`: nothing arrived within `wait`, the stream
/// is empty or the broker stalls), which a complete replay reaches. The queue's message count
/// is no such bound: it is a statistic the broker refreshes every few seconds.
async fn last_chunk_offset(
    amqp: &lapin::Connection,
    stream: &str,
    wait: Duration,
) -> Result<Option<i64>, RebuildError> {
    let (ch, mut consumer) = consume_stream(amqp, stream, "last", 1, "read-api-rebuild-tail").await?;
    let tail = match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(d)) => offset_of(&d?.properties),
        Ok(None) | Err(_) => None,
    };
    let _ = ch.close(200, "ok".into()).await;
    Ok(tail)
}

/// Runs a rebuild; `progress` is called about once a second.
pub async fn run(
    opts: &Options,
    cache: Option<&Cache>,
    mut progress: impl FnMut(Progress),
) -> Result<Report, RebuildError> {
    crate::migrate::run(&opts.database_url).await?;
    let mut db = AsyncPgConnection::establish(&opts.database_url).await?;
    let started_at: AppliedMark = diesel::sql_query("SELECT nextval('rv_applied_seq') AS mark")
        .get_result(&mut db)
        .await?;
    let fresh = Tables::rebuild();
    let live = Tables::live();
    for (new, old) in [
        (&fresh.products, &live.products),
        (&fresh.orders, &live.orders),
        (&fresh.customers, &live.customers),
    ] {
        diesel::sql_query(format!("DROP TABLE IF EXISTS {new}"))
            .execute(&mut db)
            .await?;
        diesel::sql_query(format!("CREATE TABLE {new} (LIKE {old} INCLUDING ALL)"))
            .execute(&mut db)
            .await?;
    }

    let amqp = opts.amqp_url.connect("read-api rebuild").await?.connection;
    let total = {
        // A passive declare fails (and closes its channel) if the stream does not exist: use
        // a channel of its own.
        let ch = amqp.create_channel().await?;
        let q = ch
            .queue_declare(
                opts.stream.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let n = u64::from(q.message_count());
        let _ = ch.close(200, "ok".into()).await;
        (n > 0).then_some(n)
    };
    let tail = last_chunk_offset(&amqp, &opts.stream, TAIL_WAIT).await?;
    if let (None, Some(held)) = (tail, total) {
        return Err(RebuildError::NoDelivery {
            stream: opts.stream.clone(),
            held,
            waited: TAIL_WAIT,
        });
    }
    let (ch, mut consumer) = consume_stream(&amqp, &opts.stream, "first", 1000, "read-api-rebuild").await?;

    let continuity = if opts.from_available {
        Continuity::FromAvailable
    } else {
        Continuity::Strict
    };
    let mut report = Report::default();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut offset = -1;
    loop {
        let next = match tokio::time::timeout(opts.idle, consumer.next()).await {
            Ok(Some(d)) => d?,
            Ok(None) | Err(_) => break,
        };
        let this = offset_of(&next.properties).unwrap_or(offset + 1);
        if report.events == 0 && this > 0 && !opts.from_available {
            return Err(RebuildError::HeadMissing {
                stream: opts.stream.clone(),
                detail: format!("its first offset is {this}, not 0"),
            });
        }
        offset = this;
        report.events += 1;
        match projector::parse(&next.data) {
            Ok(Parsed::Event(ev)) => match projector::apply(&mut db, &fresh, &ev, continuity).await? {
                Outcome::Applied { .. } => report.applied += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Gap { have } => {
                    let (aggregate, id) = ev.key();
                    return Err(RebuildError::HeadMissing {
                        stream: opts.stream.clone(),
                        detail: format!(
                            "{aggregate:?} {id} appears at version {} while the rebuilt view is at {have}",
                            ev.sequence()
                        ),
                    });
                }
            },
            Ok(Parsed::Unknown(_)) => report.unknown += 1,
            Err(_) => report.poison += 1,
        }
        // Acknowledging keeps the stream's credit flowing; multiple acks are cheap.
        if report.events.is_multiple_of(200) {
            let _ = next.acker.ack(BasicAckOptions { multiple: true }).await;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(Progress {
                events: report.events,
                offset,
                total,
                per_second: report.events as f64 / started.elapsed().as_secs_f64().max(0.001),
            });
        }
    }
    progress(Progress {
        events: report.events,
        offset,
        total,
        per_second: report.events as f64 / started.elapsed().as_secs_f64().max(0.001),
    });
    let _ = ch.close(200, "done".into()).await;
    let _ = amqp.close(200, "done".into()).await;
    // An idle stream means the replay caught up, unless the broker merely stalled: swapping in
    // a replay short of what the stream held at the start would drop views.
    if let Some(tail) = tail
        && offset < tail
    {
        return Err(RebuildError::Incomplete {
            stream: opts.stream.clone(),
            events: report.events,
            reached: offset,
            tail,
            idle: opts.idle,
        });
    }

    swap(&mut db, &fresh, &live, started_at.mark).await?;
    if let Some(cache) = cache {
        match cache.drop_all().await {
            Ok(n) => report.cache_keys_dropped = n,
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "could not drop the cache entries; they expire by TTL"),
        }
    }
    Ok(report)
}

/// The `applied` number a rebuild drew when it started.
#[derive(diesel::QueryableByName)]
struct AppliedMark {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    mark: i64,
}

/// Carries over what the live projector applied since the rebuild started (rows with an
/// `applied` number above `started_at`), then swaps the tables in one transaction.
async fn swap(db: &mut AsyncPgConnection, fresh: &Tables, live: &Tables, started_at: i64) -> Result<(), RebuildError> {
    let (fp, fo, fc) = (&fresh.products, &fresh.orders, &fresh.customers);
    let (lp, lo, lc) = (&live.products, &live.orders, &live.customers);
    let statements = vec![
        format!("LOCK TABLE {lp}, {lo}, {lc} IN ACCESS EXCLUSIVE MODE"),
        format!(
            "INSERT INTO {fp} SELECT * FROM {lp} WHERE applied > {started_at}
               ON CONFLICT (id) DO UPDATE SET version = excluded.version,
               name = excluded.name, price_cents = excluded.price_cents, stock = excluded.stock,
               search = excluded.search, doc = excluded.doc, applied = excluded.applied
               WHERE {fp}.version < excluded.version"
        ),
        format!(
            "INSERT INTO {fo} SELECT * FROM {lo} WHERE applied > {started_at}
               ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id,
               version = excluded.version, status = excluded.status, total_cents = excluded.total_cents,
               currency = excluded.currency, created_at = excluded.created_at, doc = excluded.doc,
               item = excluded.item, applied = excluded.applied WHERE {fo}.version < excluded.version"
        ),
        format!(
            "INSERT INTO {fc} SELECT * FROM {lc} WHERE applied > {started_at}
               ON CONFLICT (customer_id) DO UPDATE
               SET revision = GREATEST({fc}.revision, excluded.revision), applied = excluded.applied"
        ),
        format!("ALTER TABLE {lp} RENAME TO {lp}_old"),
        format!("ALTER TABLE {lo} RENAME TO {lo}_old"),
        format!("ALTER TABLE {lc} RENAME TO {lc}_old"),
        format!("ALTER TABLE {fp} RENAME TO {lp}"),
        format!("ALTER TABLE {fo} RENAME TO {lo}"),
        format!("ALTER TABLE {fc} RENAME TO {lc}"),
        format!("DROP TABLE {lp}_old, {lo}_old, {lc}_old"),
        format!("NOTIFY {NOTIFY_CHANNEL}, '{}'", Announcement::Rebuilt),
    ];
    // One transaction, spelled out: the statements are plain SQL and the lock must cover all.
    diesel::sql_query("BEGIN").execute(db).await?;
    for s in statements {
        if let Err(e) = diesel::sql_query(s).execute(db).await {
            let _ = diesel::sql_query("ROLLBACK").execute(db).await;
            return Err(e.into());
        }
    }
    diesel::sql_query("COMMIT").execute(db).await?;
    Ok(())
}
