//! `read-api [serve]` serves HTTP and runs the projector in the same process (applying
//! pending migrations first); `read-api migrate` only applies them; `read-api rebuild
//! [--from-available]` rebuilds the views from the event stream.

use std::time::Duration;

use ordering_platform::settings::SettingError;
use ordering_platform::{http, shutdown, telemetry};
use read_api::{Service, Settings, rebuild};

const USAGE: &str = "usage: read-api [serve | migrate | rebuild [--from-available]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}");
        return Ok(());
    }
    telemetry::init().unwrap_or_else(|e| e.exit());
    let settings = Settings::from_env().unwrap_or_else(|e| e.exit());
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(settings).await,
        Some("migrate") => {
            let applied = read_api::migrate::run(&settings.database_url).await?;
            tracing::info!(?applied, "view migrations up to date");
            Ok(())
        }
        Some("rebuild") => {
            let from_available = match args.get(1).map(String::as_str) {
                None => false,
                Some("--from-available") => true,
                Some(other) => {
                    eprintln!("unknown option {other:?}; {USAGE}");
                    std::process::exit(2);
                }
            };
            run_rebuild(settings, from_available).await
        }
        Some(other) => {
            eprintln!("unknown command {other:?}; {USAGE}");
            std::process::exit(2);
        }
    }
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
        Err(e @ rebuild::RebuildError::HeadMissing { .. }) => {
            eprintln!("rebuild refused: {e}");
            std::process::exit(1);
        }
        Err(e) => Err(e.into()),
    }
}
