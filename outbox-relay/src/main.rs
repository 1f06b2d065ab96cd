//! `outbox-relay`: serve (default), `migrate`, `dlq list|replay <id|--all>|discard <id>`.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use ordering_platform::settings::SettingError;
use outbox_relay::settings::Settings;
use outbox_relay::store::DeadLetters;

const USAGE: &str = "usage: outbox-relay [serve | migrate | dlq list | dlq replay <id|--all> | dlq discard <id>]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(e) = ordering_platform::telemetry::init() {
        e.exit();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let settings = Settings::from_env().unwrap_or_else(|e: SettingError| e.exit());
    match args.as_slice() {
        [] | ["serve"] => match outbox_relay::serve(settings).await {
            Err(outbox_relay::RelayError::Setting(e)) => e.exit(),
            Err(outbox_relay::RelayError::Schema(e @ outbox_relay::schema::SchemaError::Partitions { .. })) => {
                SettingError::new("RELAY_PARTITIONS", e.to_string()).exit()
            }
            r => Ok(r?),
        },
        ["migrate"] => {
            let n = outbox_relay::schema::migrate(&settings.database_url, &settings.table, settings.partitions).await?;
            println!(
                "relay schema of {} up to date ({n} step(s) applied)",
                settings.table.table()
            );
            Ok(())
        }
        ["dlq", cmd, rest @ ..] => {
            outbox_relay::schema::migrate(&settings.database_url, &settings.table, settings.partitions).await?;
            let mut conn = AsyncPgConnection::establish(&settings.database_url).await?;
            let mut dlq = DeadLetters::new(&mut conn, &settings.table);
            match (*cmd, rest) {
                ("list", []) => {
                    for d in dlq.list().await? {
                        println!("{}", serde_json::to_string(&d)?);
                    }
                }
                ("replay", ["--all"]) => println!("replayed {}", dlq.replay(None).await?),
                ("replay", [id]) => {
                    let n = dlq.replay(Some(parse_id(id))).await?;
                    anyhow::ensure!(n == 1, "no dead letter with outbox id {id}");
                    println!("replayed {n}");
                }
                ("discard", [id]) => {
                    let n = dlq.discard(parse_id(id)).await?;
                    anyhow::ensure!(n == 1, "no dead letter with outbox id {id}");
                    println!("discarded {n}");
                }
                _ => usage(),
            }
            Ok(())
        }
        _ => usage(),
    }
}

fn parse_id(id: &str) -> i64 {
    id.parse().unwrap_or_else(|_| {
        eprintln!("{id:?} is not an outbox id");
        std::process::exit(2)
    })
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}
