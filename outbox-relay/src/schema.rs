//! The relay's own schema objects, named after the outbox table so that one database can host
//! several outboxes (and several relays), each touching only its own objects.
//!
//! diesel's `embed_migrations!` cannot be parameterised by table name, so the relay keeps a
//! small versioned list of SQL steps of its own ([`STEPS`]). Each step is idempotent
//! (`IF NOT EXISTS`, `CREATE OR REPLACE`), runs in a transaction, and is recorded in
//! `<table>_relay_schema`; the whole run holds an advisory lock keyed by the table name, so
//! instances starting together apply each step once. Every instance runs this at start;
//! `outbox-relay migrate` runs it alone. The `dlq` commands never run DDL: they only [`check`]
//! that the steps they rely on were applied, so they work with a role that cannot create.

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// The outbox table and the names of the relay's objects derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableNames {
    schema: Option<String>,
    base: String,
}

impl TableNames {
    /// Parses `table` or `schema.table`: plain SQL identifiers (letters, digits, `_`, not
    /// starting with a digit), folded to lower case as PostgreSQL folds unquoted names.
    pub fn parse(v: &str) -> Result<Self, String> {
        let v = v.trim().to_ascii_lowercase();
        let parts: Vec<&str> = v.split('.').collect();
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let bad = || format!("{v:?} is not a table name like outbox or billing.outbox");
        let (schema, base) = match parts.as_slice() {
            [base] if ident(base) => (None, (*base).to_owned()),
            [schema, base] if ident(schema) && ident(base) => (Some((*schema).to_owned()), (*base).to_owned()),
            _ => return Err(bad()),
        };
        // The longest derived name (`_relay_dead_letters_aggregate`) adds 20 characters and must fit PostgreSQL's 63.
        if base.len() > 40 {
            return Err(format!("{v:?}: the table name may have at most 40 characters"));
        }
        Ok(Self { schema, base })
    }

    /// The outbox itself, as written in SQL.
    pub fn table(&self) -> String {
        self.sibling(&self.base)
    }

    /// A relay object next to the outbox (same schema): `<table>_relay_<suffix>`.
    pub fn object(&self, suffix: &str) -> String {
        self.sibling(&self.bare(suffix))
    }

    /// The outbox's own name, without its schema.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The unqualified name of a relay object (indexes and triggers take no schema).
    pub fn bare(&self, suffix: &str) -> String {
        format!("{}_relay_{suffix}", self.base)
    }

    /// The NOTIFY channel of this outbox.
    pub fn channel(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}_{}_relay", self.base),
            None => format!("{}_relay", self.base),
        }
    }

    /// The key of the advisory lock that guards this outbox's migrations.
    pub fn lock_key(&self) -> i64 {
        // FNV-1a: stable across versions and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("outbox-relay:{}", self.table()).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h as i64
    }

    /// `name` in the outbox's schema, as written in SQL.
    pub fn sibling(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        }
    }

    /// The partition of a row, as SQL over the outbox's columns: a stable hash of the
    /// aggregate, so all of one aggregate's rows fall in one partition.
    pub fn partition_expr(alias: &str, partitions: i32) -> String {
        format!("((hashtext({alias}.aggregate_type || ':' || {alias}.aggregate_id) & 2147483647) % {partitions})")
    }
}

/// The relay's schema steps, in order. `{t}` is the outbox, `{o:x}` the object `x`, `{b:x}` its
/// bare name, `{chan}` the NOTIFY channel. Never edit a released step: add a new one.
pub const STEPS: &[&str] = &[
    // 1: sending state on the outbox rows, a partial index that keeps the unsent set cheap to
    // scan however large the table grows, leases, instances, dead letters, the NOTIFY trigger.
    r#"
ALTER TABLE {t}
  ADD COLUMN IF NOT EXISTS sent_at timestamptz,
  ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS last_error text;
CREATE INDEX IF NOT EXISTS {b:unsent} ON {t} (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS {o:leases} (
  partition  integer     PRIMARY KEY,
  owner      uuid,
  fence      bigint      NOT NULL DEFAULT 0,
  expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE TABLE IF NOT EXISTS {o:instances} (
  id      uuid        PRIMARY KEY,
  seen_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {o:dead_letters} (
  outbox_id      bigint      PRIMARY KEY,
  event_id       uuid        NOT NULL,
  aggregate_type text        NOT NULL,
  aggregate_id   text        NOT NULL,
  sequence       bigint      NOT NULL,
  event_type     text        NOT NULL,
  attempts       integer     NOT NULL,
  last_error     text        NOT NULL,
  dead_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {b:dead_letters_aggregate} ON {o:dead_letters} (aggregate_type, aggregate_id);
CREATE OR REPLACE FUNCTION {o:notify}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{chan}', '');
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER {b:notify} AFTER INSERT ON {t}
  FOR EACH STATEMENT EXECUTE FUNCTION {o:notify}();
"#,
];

/// Why the relay's schema could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database error on the relay's schema: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("the relay's schema of {table} is not in this database: run `outbox-relay migrate`")]
    NotMigrated { table: String },
    #[error(
        "the relay's schema of {table} is at version {have}, this outbox-relay needs {want}: run `outbox-relay migrate`"
    )]
    Outdated { table: String, have: i32, want: i32 },
    #[error(
        "the outbox has {existing} partitions but RELAY_PARTITIONS is {wanted}: every relay on one outbox must use the same number"
    )]
    Partitions { existing: i32, wanted: i32 },
}

/// Renders step `sql` for `names`.
pub fn render(sql: &str, names: &TableNames) -> String {
    let mut out = sql.replace("{t}", &names.table()).replace("{chan}", &names.channel());
    for (marker, f) in [("{o:", true), ("{b:", false)] {
        while let Some(start) = out.find(marker) {
            let Some(len) = out[start..].find('}') else { break };
            let suffix = out[start + marker.len()..start + len].to_owned();
            let name = if f { names.object(&suffix) } else { names.bare(&suffix) };
            out.replace_range(start..start + len + 1, &name);
        }
    }
    out
}

/// Applies the pending steps and makes sure `partitions` lease rows exist. Returns how many
/// steps this call applied.
pub async fn migrate(database_url: &str, names: &TableNames, partitions: i32) -> Result<usize, SchemaError> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let key = names.lock_key();
    diesel::sql_query(format!("SELECT pg_advisory_lock({key})"))
        .execute(&mut conn)
        .await?;
    let result = apply(&mut conn, names, partitions).await;
    // The lock also ends with the session; unlocking now frees waiting instances sooner.
    let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({key})"))
        .execute(&mut conn)
        .await;
    result
}

/// Checks, without changing anything, that every step of this build was applied to `names`.
/// A database migrated further by a newer relay passes: steps only ever add.
pub async fn check(conn: &mut AsyncPgConnection, names: &TableNames) -> Result<(), SchemaError> {
    let versions = names.object("schema");
    // to_regclass answers NULL for a missing table instead of failing the statement, and needs
    // no right on the table itself.
    let exists: Version = diesel::sql_query("SELECT (to_regclass($1) IS NOT NULL)::int AS v")
        .bind::<diesel::sql_types::Text, _>(&versions)
        .get_result(conn)
        .await?;
    if exists.v == 0 {
        return Err(SchemaError::NotMigrated { table: names.table() });
    }
    let have: Version = diesel::sql_query(format!("SELECT coalesce(max(version), 0) AS v FROM {versions}"))
        .get_result(conn)
        .await?;
    // No step recorded: a first migration failed after creating the version table.
    if have.v == 0 {
        return Err(SchemaError::NotMigrated { table: names.table() });
    }
    let want = STEPS.len() as i32;
    if have.v < want {
        return Err(SchemaError::Outdated {
            table: names.table(),
            have: have.v,
            want,
        });
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Integer)]
    v: i32,
}

async fn apply(conn: &mut AsyncPgConnection, names: &TableNames, partitions: i32) -> Result<usize, SchemaError> {
    let versions = names.object("schema");
    conn.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {versions} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"))
        .await?;
    let done: Version = diesel::sql_query(format!("SELECT coalesce(max(version), 0) AS v FROM {versions}"))
        .get_result(conn)
        .await?;
    let mut applied = 0;
    for (i, step) in STEPS.iter().enumerate() {
        let version = i as i32 + 1;
        if version <= done.v {
            continue;
        }
        let sql = format!(
            "{}\nINSERT INTO {versions} (version) VALUES ({version});",
            render(step, names)
        );
        if let Err(e) = conn.batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;")).await {
            // The failed transaction must not leak into the unlock that follows.
            let _ = conn.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
        applied += 1;
        tracing::info!(table = %names.table(), version, "applied relay schema step");
    }
    let leases = names.object("leases");
    let existing: Version = diesel::sql_query(format!("SELECT count(*)::int AS v FROM {leases}"))
        .get_result(conn)
        .await?;
    if existing.v != 0 && existing.v != partitions {
        return Err(SchemaError::Partitions {
            existing: existing.v,
            wanted: partitions,
        });
    }
    diesel::sql_query(format!(
        "INSERT INTO {leases} (partition) SELECT generate_series(0, {}) ON CONFLICT DO NOTHING",
        partitions - 1
    ))
    .execute(conn)
    .await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let n = TableNames::parse("outbox").unwrap();
        assert_eq!(n.table(), "outbox");
        assert_eq!(n.object("leases"), "outbox_relay_leases");
        assert_eq!(n.channel(), "outbox_relay");
        let n = TableNames::parse("Billing.Events_Outbox").unwrap();
        assert_eq!(n.table(), "billing.events_outbox");
        assert_eq!(n.object("leases"), "billing.events_outbox_relay_leases");
        assert_eq!(n.bare("unsent"), "events_outbox_relay_unsent");
        for bad in ["", "a.b.c", "1abc", "out box", "outbox;drop", "\"outbox\"", "a."] {
            assert!(TableNames::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn render_fills_every_name() {
        let n = TableNames::parse("s.ob").unwrap();
        let sql = render(STEPS[0], &n);
        assert!(!sql.contains("{o:") && !sql.contains("{b:") && !sql.contains("{t}"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS s.ob_relay_leases"));
        assert!(sql.contains("CREATE INDEX IF NOT EXISTS ob_relay_unsent ON s.ob"));
        assert!(sql.contains("pg_notify('s_ob_relay'"));
    }
}
