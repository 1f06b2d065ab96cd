//! `outbox-relay`: serve (default), `migrate`, `dlq list [--json] [--limit <n>|--all]`,
//! `dlq show <id> [--json]`, `dlq replay <id|--all>`, `dlq discard <id>`.
//! Arguments are parsed before any setting is read, so `--help` needs none.
//!
//! Only `serve` and `migrate` run DDL. The `dlq` commands check that the relay's schema is
//! there and current ([`outbox_relay::schema::check`]) and otherwise say to run `migrate`:
//! `list` and `show` need nothing but SELECT (and run read-only), `replay` and `discard` the
//! rights to change rows. The table and record views are [`outbox_relay::dlq`].

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use ordering_platform::cli::{self, ADMIN_SETTINGS, AMQP_SETTINGS, COMMON_SETTINGS};
use ordering_platform::settings::SettingError;
use outbox_relay::settings::{HELP, Settings};
use outbox_relay::store::DeadLetters;

/// Publishes the rows of an outbox table to RabbitMQ, in order per aggregate, at least once.
#[derive(Parser)]
#[command(name = "outbox-relay", version, after_help = cli::settings_help(&[COMMON_SETTINGS, AMQP_SETTINGS, HELP, ADMIN_SETTINGS]))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the relay's schema, then relay the outbox (the default)
    Serve,
    /// Apply the relay's schema to the outbox's database and exit
    Migrate,
    /// Inspect and resolve dead-lettered outbox rows
    #[command(subcommand)]
    Dlq(Dlq),
}

#[derive(Subcommand)]
enum Dlq {
    /// List dead letters, oldest first, as a table (the last error cut to fit `COLUMNS`)
    List {
        /// One JSON object a line, every field in full (for scripts)
        #[arg(long)]
        json: bool,
        /// Show at most this many; a footer says how many more there are
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// Show every dead letter
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// Print one dead letter in full: its fields, last error and payload
    Show {
        /// The outbox id of the row (the first column of `dlq list`)
        id: i64,
        /// One JSON object (for scripts)
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again
    Replay {
        /// The outbox id of the row to send again
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Send every dead letter again
        #[arg(long)]
        all: bool,
    },
    /// Drop a dead letter for good
    Discard {
        /// The outbox id of the row to drop
        id: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = cli::parse::<Cli>().command.unwrap_or(Command::Serve);
    let _telemetry = ordering_platform::telemetry::init("outbox-relay").unwrap_or_else(|e| e.exit());
    let settings = Settings::from_env().unwrap_or_else(|e: SettingError| e.exit());
    cli::exit_code(match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(&settings).await,
        Command::Dlq(command) => dlq(&settings, command).await,
    })
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    match outbox_relay::serve(settings).await {
        Err(outbox_relay::RelayError::Setting(e)) => e.exit(),
        Err(outbox_relay::RelayError::Schema(e @ outbox_relay::schema::SchemaError::Partitions { .. })) => {
            SettingError::new("RELAY_PARTITIONS", e.to_string()).exit()
        }
        r => Ok(r?),
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let n = outbox_relay::schema::migrate(&settings.database_url, &settings.table, settings.partitions).await?;
    let mut conn = AsyncPgConnection::establish(&settings.database_url).await?;
    let days =
        outbox_relay::retention::prepare(&mut conn, &settings.table, settings.retention, chrono::Utc::now()).await?;
    println!(
        "relay schema of {} up to date ({n} step(s) applied, {days} day partition(s) created)",
        settings.table.table()
    );
    Ok(())
}

async fn dlq(settings: &Settings, command: Dlq) -> anyhow::Result<()> {
    let table = &settings.table;
    let mut conn = AsyncPgConnection::establish(&settings.database_url).await?;
    if matches!(command, Dlq::List { .. } | Dlq::Show { .. }) {
        // Whatever a later change to these queries does, looking never changes anything.
        conn.batch_execute("SET default_transaction_read_only = on").await?;
    }
    outbox_relay::schema::check(&mut conn, table).await?;
    let mut dlq = DeadLetters::new(&mut conn, table);
    let mut out = std::io::stdout().lock();
    let printed = match command {
        Dlq::List { json, limit, all } => {
            let page = dlq.list((!all).then_some(limit)).await?;
            if json {
                // stdout stays pure NDJSON; what was left out goes to stderr.
                if let Some(note) = outbox_relay::dlq::more_note(&page) {
                    eprintln!("{note}");
                }
                outbox_relay::dlq::ndjson(&mut out, &page.letters)
            } else {
                let width = std::env::var("COLUMNS")
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(outbox_relay::dlq::DEFAULT_WIDTH);
                outbox_relay::dlq::table(&mut out, &page, &table.table(), width)
            }
        }
        Dlq::Show { id, json } => {
            let Some(d) = dlq.show(id).await? else {
                anyhow::bail!("no dead letter with outbox id {id} in {}", table.table());
            };
            if json {
                outbox_relay::dlq::show_json(&mut out, &d)
            } else {
                outbox_relay::dlq::show(&mut out, &d)
            }
        }
        Dlq::Replay { id: None, .. } => writeln!(out, "replayed {}", dlq.replay(None).await?),
        Dlq::Replay { id: Some(id), .. } => {
            let n = dlq.replay(Some(id)).await?;
            anyhow::ensure!(n == 1, "no dead letter with outbox id {id}");
            writeln!(out, "replayed {n}")
        }
        Dlq::Discard { id } => {
            let n = dlq.discard(id).await?;
            anyhow::ensure!(n == 1, "no dead letter with outbox id {id}");
            writeln!(out, "discarded {n}")
        }
    };
    match printed.and_then(|()| out.flush()) {
        // A reader that stopped early (`| head`) is not a failure of the command.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
