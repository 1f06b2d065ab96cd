//! `read-api [serve]` serves HTTP and runs the projector in the same process (applying
//! pending migrations first); `read-api migrate` only applies them; `read-api rebuild
//! [--from-available]` rebuilds the views from the event stream; `read-api dlq
//! list|show|replay|discard` handles the projector's dead letters. Arguments are parsed before
//! any setting is read, so `--help` needs none.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ordering_platform::cli::{self, AMQP_SETTINGS, AUTH_SETTINGS, COMMON_SETTINGS};
use ordering_platform::settings::SettingError;
use ordering_platform::{http, shutdown, telemetry};
use read_api::dead_letters::{self, DeadLetterError, DeadLetterQueue, Disposition};
use read_api::settings::HELP;
use read_api::{Service, Settings, rebuild};

/// The read side of ordering: projects the events into views and serves queries on them.
#[derive(Parser)]
#[command(name = "read-api", version, after_help = cli::settings_help(&[COMMON_SETTINGS, AMQP_SETTINGS, AUTH_SETTINGS, HELP]))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve HTTP and project events (the default)
    Serve,
    /// Apply pending view migrations and exit
    Migrate,
    /// Inspect and resolve the projector's dead letters (<PROJECTOR_QUEUE>.dead)
    #[command(subcommand)]
    Dlq(Dlq),
    /// Rebuild the views from the event stream, then swap them in
    Rebuild {
        /// Start from the oldest event the stream still holds, even if older ones were dropped
        #[arg(long)]
        from_available: bool,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// List dead letters, oldest first, as a table
    List {
        /// One JSON object a line, every field in full
        #[arg(long)]
        json: bool,
        /// List at most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one dead letter in full: headers, reason and body
    Show {
        /// Its id, as `dlq list` prints it
        id: String,
        /// As one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the projector to be applied again
    Replay {
        /// The id of the dead letter to send back
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Send every dead letter back
        #[arg(long)]
        all: bool,
    },
    /// Drop a dead letter for good
    Discard {
        /// The id of the dead letter to drop
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = cli::parse::<Cli>().command.unwrap_or(Command::Serve);
    let _telemetry = telemetry::init("read-api").unwrap_or_else(|e| e.exit());
    cli::exit_code(match command {
        Command::Serve => serve(settings()).await,
        // Only the database: migrating asks for no secret.
        Command::Migrate => migrate(&read_api::settings::database_url().unwrap_or_else(|e| e.exit())).await,
        Command::Rebuild { from_available } => run_rebuild(settings(), from_available).await,
        // Only the broker: dead letters need no database, Redis or secret.
        Command::Dlq(command) => {
            let amqp_url = read_api::settings::amqp_url().unwrap_or_else(|e| e.exit());
            dlq(&amqp_url, &read_api::settings::projector_queue(), command).await
        }
    })
}

/// Every setting; a bad one exits 2 with one line naming it.
fn settings() -> Settings {
    Settings::from_env().unwrap_or_else(|e| e.exit())
}

async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let applied = read_api::migrate::run(database_url).await?;
    tracing::info!(?applied, "view migrations up to date");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = http::bind("READ_API_ADDR", settings.addr)
        .await
        .unwrap_or_else(|e: SettingError| e.exit());
    let service = match Service::start(&settings).await {
        Ok(s) => s,
        Err(read_api::service::StartError::Redis(e)) => SettingError::new("REDIS_URL", e.to_string()).exit(),
        Err(e) => return Err(e.into()),
    };
    let app = service.router(&settings);
    http::serve(listener, app, shutdown::signal()).await?;
    // HTTP has drained; now stop consuming and let the projector finish what it holds.
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn run_rebuild(settings: Settings, from_available: bool) -> anyhow::Result<()> {
    let cache = read_api::cache::Cache::new(
        &settings.redis_url,
        &settings.redis_key_prefix,
        settings.cache_ttl,
        settings.local_cache_ttl,
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| SettingError::new("REDIS_URL", e.to_string()).exit());
    let opts = rebuild::Options {
        database_url: settings.database_url.clone(),
        amqp_url: settings.amqp_url.clone(),
        stream: settings.stream.clone(),
        from_available,
        idle: Duration::from_secs(2),
    };
    println!("rebuilding the views from stream {} ...", opts.stream);
    let result = rebuild::run(&opts, Some(&cache), |p| {
        let of = p.total.map(|t| format!(" of ~{t}")).unwrap_or_default();
        println!(
            "  {} events{of} (offset {}), {:.0} events/s",
            p.events, p.offset, p.per_second
        );
    })
    .await;
    match result {
        Ok(r) => {
            println!(
                "rebuilt: {} events replayed, {} applied, {} duplicates, {} unknown, {} unparsable; {} cache keys dropped; new views swapped in",
                r.events, r.applied, r.duplicates, r.unknown, r.poison, r.cache_keys_dropped
            );
            Ok(())
        }
        Err(
            e @ (rebuild::RebuildError::HeadMissing { .. }
            | rebuild::RebuildError::Incomplete { .. }
            | rebuild::RebuildError::NoDelivery { .. }),
        ) => {
            eprintln!("rebuild refused: {e}");
            std::process::exit(1);
        }
        Err(e) => Err(e.into()),
    }
}

async fn dlq(amqp_url: &ordering_platform::amqp::AmqpNodes, projector_queue: &str, command: Dlq) -> anyhow::Result<()> {
    let queue = DeadLetterQueue::open(amqp_url, projector_queue).await?;
    let result = run_dlq(&queue, command).await;
    queue.close().await;
    result
}

async fn run_dlq(queue: &DeadLetterQueue, command: Dlq) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Dlq::List { json, limit } => {
            let letters: Vec<_> = queue
                .sweep(limit, |_| Disposition::Keep)
                .await?
                .into_iter()
                .map(|(d, _)| d)
                .collect();
            if json {
                for d in &letters {
                    serde_json::to_writer(&mut out, d)?;
                    writeln!(out)?;
                }
            } else {
                dead_letters::table(&mut out, &letters, queue.name())?;
            }
        }
        Dlq::Show { id, json } => {
            let taken = queue.sweep(usize::MAX, |_| Disposition::Keep).await?;
            let Some((d, _)) = taken.iter().find(|(d, _)| d.id == id) else {
                return Err(unknown(id, queue).into());
            };
            if json {
                serde_json::to_writer_pretty(&mut out, d)?;
                writeln!(out)?;
            } else {
                dead_letters::show(&mut out, d)?;
            }
        }
        Dlq::Replay { id, .. } => {
            let n = queue.resolve(id.as_deref(), Disposition::Replay).await?;
            writeln!(out, "replayed {n}")?;
        }
        Dlq::Discard { id } => {
            let n = queue.resolve(Some(&id), Disposition::Discard).await?;
            writeln!(out, "discarded {n}")?;
        }
    }
    Ok(())
}

fn unknown(id: String, queue: &DeadLetterQueue) -> DeadLetterError {
    DeadLetterError::Unknown {
        id,
        queue: queue.name().to_owned(),
    }
}
