//! `outbox-relay`: serve (default), `migrate`, `dlq list|replay <id|--all>|discard <id>`.
//! Arguments are parsed before any setting is read, so `--help` needs none.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use ordering_platform::cli::{self, AMQP_SETTINGS, COMMON_SETTINGS};
use ordering_platform::settings::SettingError;
use outbox_relay::settings::{HELP, Settings};
use outbox_relay::store::DeadLetters;

/// Publishes the rows of an outbox table to RabbitMQ, in order per aggregate, at least once.
#[derive(Parser)]
#[command(name = "outbox-relay", version, after_help = cli::settings_help(&[COMMON_SETTINGS, AMQP_SETTINGS, HELP]))]
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
    /// Print every dead letter, one JSON object a line
    List,
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
    ordering_platform::telemetry::init().unwrap_or_else(|e| e.exit());
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
    println!(
        "relay schema of {} up to date ({n} step(s) applied)",
        settings.table.table()
    );
    Ok(())
}

async fn dlq(settings: &Settings, command: Dlq) -> anyhow::Result<()> {
    outbox_relay::schema::migrate(&settings.database_url, &settings.table, settings.partitions).await?;
    let mut conn = AsyncPgConnection::establish(&settings.database_url).await?;
    let mut dlq = DeadLetters::new(&mut conn, &settings.table);
    match command {
        Dlq::List => {
            for d in dlq.list().await? {
                println!("{}", serde_json::to_string(&d)?);
            }
        }
        Dlq::Replay { id: None, .. } => println!("replayed {}", dlq.replay(None).await?),
        Dlq::Replay { id: Some(id), .. } => {
            let n = dlq.replay(Some(id)).await?;
            anyhow::ensure!(n == 1, "no dead letter with outbox id {id}");
            println!("replayed {n}");
        }
        Dlq::Discard { id } => {
            let n = dlq.discard(id).await?;
            anyhow::ensure!(n == 1, "no dead letter with outbox id {id}");
            println!("discarded {n}");
        }
    }
    Ok(())
}
