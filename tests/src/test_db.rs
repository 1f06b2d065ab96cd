//! A PostgreSQL database per test, cloned from a migrated template (as crates.io does).
//!
//! The template is built once per set of migrations (its name carries a hash of the
//! migration files), under an advisory lock so parallel test processes build it once. Each
//! test then gets `CREATE DATABASE … TEMPLATE …`, which copies files instead of replaying
//! migrations, and the database is dropped when the [`TestDatabase`] is.

use std::path::Path;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};

/// Where test databases are created: `TEST_DATABASE_URL`, default the local server.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned())
}

fn url_of(db: &str) -> String {
    format!("{}/{db}", server_url())
}

/// A database of its own for one test, dropped (with FORCE) when this value is dropped.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// A fresh database with every write-side migration applied.
    pub async fn new() -> Self {
        let template = ensure_template().await;
        let name = format!("ordering_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_conn().await;
        // Copying from a template fails while anyone else is connected to the template;
        // nobody is, once it has been built, but retry briefly in case its builder is closing.
        let mut tries = 0;
        loop {
            match diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .execute(&mut admin)
                .await
            {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "template busy, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create test database from {template}: {e}"),
            }
        }
        let url = url_of(&name);
        Self { name, url }
    }

    /// An empty database (no migrations), e.g. for a read side or a sidecar's own schema.
    pub async fn empty() -> Self {
        let name = format!("ordering_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_conn().await;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = url_of(&name);
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to this database.
    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to test database")
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await;
        let row: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(&mut conn)
            .await
            .expect("count rows");
        row.n
    }

    /// Runs `sql` (a SELECT) and returns its rows as JSON objects, in the query's order.
    pub async fn query_json(&self, sql: &str) -> Vec<serde_json::Value> {
        #[derive(QueryableByName)]
        struct Rows {
            #[diesel(sql_type = diesel::sql_types::Text)]
            j: String,
        }
        let mut conn = self.conn().await;
        let rows: Rows = diesel::sql_query(format!(
            "SELECT coalesce(json_agg(t), '[]'::json)::text AS j FROM ({sql}) t"
        ))
        .get_result(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("query {sql}: {e}"));
        serde_json::from_str(&rows.j).expect("rows as JSON")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime (or while unwinding from a failed test): use a
        // thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut admin) = AsyncPgConnection::establish(&url_of("postgres")).await {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn admin_conn() -> AsyncPgConnection {
    AsyncPgConnection::establish(&url_of("postgres"))
        .await
        .expect("connect to the test PostgreSQL server (TEST_DATABASE_URL)")
}

/// Builds the template for the current migrations if it does not exist yet; returns its name.
async fn ensure_template() -> String {
    let name = format!("ordering_template_{}", migrations_hash());
    let mut admin = admin_conn().await;
    diesel::sql_query("SELECT pg_advisory_lock(727274)")
        .execute(&mut admin)
        .await
        .expect("lock");
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let exists: Exists = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"
    ))
    .get_result(&mut admin)
    .await
    .expect("look up template");
    if exists.n == 0 {
        // Build under a temporary name and rename at the end, so a half-built template
        // (a test process killed midway) is never used.
        let building = format!("{name}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .expect("drop");
        diesel::sql_query(format!("CREATE DATABASE {building}"))
            .execute(&mut admin)
            .await
            .expect("create template");
        ordering_schema::migrate::run_pending(
            &url_of(&building),
            ordering_schema::migrate::WRITE_SIDE,
            ordering_schema::migrate::WRITE_SIDE_LOCK,
        )
        .await
        .expect("migrate template");
        diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
            .execute(&mut admin)
            .await
            .expect("rename template");
    }
    diesel::sql_query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut admin)
        .await
        .expect("unlock");
    name
}

/// A short hash of every migration file, so a changed migration gets a new template.
fn migrations_hash() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/migrations");
    let mut files = Vec::new();
    collect(&dir, &mut files);
    files.sort();
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.to_string_lossy().as_bytes());
        hash.update(std::fs::read(&f).expect("read migration"));
    }
    hex::encode(&hash.finalize()[..6])
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read migrations dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}
