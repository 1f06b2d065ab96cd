//! `write-api [serve]` runs the service (applying pending migrations first);
//! `write-api migrate` only applies them; `write-api token` prints a bearer token.
//! Arguments are parsed before any setting is read, so `--help` needs none.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ordering_platform::auth::{self, Role};
use ordering_platform::cli::{self, AUTH_SETTINGS, COMMON_SETTINGS};
use ordering_platform::{http, settings::SettingError, shutdown, telemetry};
use ordering_schema::migrate;
use uuid::Uuid;
use write_api::{AppState, Settings, settings::HELP};

/// The write side of ordering: commands on products and orders, each with its outbox event.
#[derive(Parser)]
#[command(name = "write-api", version, after_help = cli::settings_help(&[COMMON_SETTINGS, AUTH_SETTINGS, HELP]))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve HTTP (the default)
    Serve,
    /// Apply pending migrations and exit
    Migrate,
    /// Print a bearer token signed with JWT_SECRET (for demos, tests and operations)
    Token {
        /// The caller's id (a UUID): a customer's id, or an admin's
        #[arg(long)]
        sub: Uuid,
        /// What the caller may do
        #[arg(long, value_enum)]
        role: Role,
        /// How long the token is valid: 250ms, 30s, 5m, 12h, 7d
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

fn parse_ttl(v: &str) -> Result<Duration, String> {
    ordering_platform::settings::parse_duration(v)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "not a positive duration like 30s, 5m, 1h or 7d".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    match cli::parse::<Cli>().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let (_telemetry, settings) = settings();
            cli::exit_code(serve(settings).await)
        }
        Command::Migrate => {
            let _telemetry = telemetry::init("write-api").unwrap_or_else(|e| e.exit());
            let database_url = write_api::settings::database_url().unwrap_or_else(|e| e.exit());
            cli::exit_code(apply_migrations(&database_url).await)
        }
        Command::Token { sub, role, ttl } => {
            // Only the secret: minting a token needs no database or other setting.
            let secret = auth::jwt_secret_from_env().unwrap_or_else(|e| e.exit());
            let token = auth::issue_hs256(secret.as_bytes(), sub, role, ttl);
            cli::exit_code(token.map(|t| println!("{t}")).map_err(Into::into))
        }
    }
}

/// Logging and tracing (kept until the returned guard drops), then the settings; a bad one
/// exits 2 with one line naming it.
fn settings() -> (telemetry::Telemetry, Settings) {
    let telemetry = telemetry::init("write-api").unwrap_or_else(|e| e.exit());
    (telemetry, Settings::from_env().unwrap_or_else(|e| e.exit()))
}

async fn apply_migrations(database_url: &str) -> anyhow::Result<()> {
    let applied = migrate::run_pending(database_url, migrate::WRITE_SIDE, migrate::WRITE_SIDE_LOCK).await?;
    tracing::info!(applied = ?applied, "migrations up to date");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    apply_migrations(&settings.database_url).await?;
    let listener = http::bind("WRITE_API_ADDR", settings.addr)
        .await
        .unwrap_or_else(|e: SettingError| e.exit());
    let state = AppState::new(
        &settings.database_url,
        settings.pool_size,
        settings.auth.clone(),
        settings.consistency_key.clone(),
        &settings.limits,
    )
    .with_read_api_url(&settings.read_api_url);
    tokio::spawn(write_api::expire_idempotency_keys(
        state.pool.clone(),
        settings.idempotency_ttl,
    ));
    let app = write_api::router(state, settings.limits);
    http::serve(listener, app, shutdown::signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
