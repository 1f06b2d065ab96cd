//! `write-api [serve]` runs the service (applying pending migrations first);
//! `write-api migrate` only applies them.

use ordering_platform::{http, settings::SettingError, shutdown, telemetry};
use ordering_schema::migrate;
use write_api::{AppState, Settings};

const USAGE: &str = "usage: write-api [serve | migrate]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("-h" | "--help")) {
        println!("{USAGE}");
        return Ok(());
    }
    telemetry::init().unwrap_or_else(|e| e.exit());
    let settings = Settings::from_env().unwrap_or_else(|e| e.exit());
    match command.as_deref() {
        None | Some("serve") => serve(settings).await,
        Some("migrate") => {
            apply_migrations(&settings).await?;
            Ok(())
        }
        Some(other) => {
            eprintln!("unknown command {other:?}; {USAGE}");
            std::process::exit(2);
        }
    }
}

async fn apply_migrations(settings: &Settings) -> anyhow::Result<()> {
    let applied = migrate::run_pending(&settings.database_url, migrate::WRITE_SIDE, migrate::WRITE_SIDE_LOCK).await?;
    tracing::info!(applied = ?applied, "migrations up to date");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    apply_migrations(&settings).await?;
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
