//! The PostgreSQL connection pool shared by a service's handlers, and [`Statement`]: hand-written
//! SQL that connections keep prepared.

use std::marker::PhantomData;
use std::time::Duration;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{ConnectionError, QueryResult};
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// A pool of async PostgreSQL connections.
pub type PgPool = Pool<AsyncPgConnection>;
/// A connection checked out of a [`PgPool`].
pub type PgConn = Object<AsyncPgConnection>;

/// Builds a pool of at most `max_size` connections. Waiting for a connection and opening one
/// are both bounded, so a database that is gone turns into a quick error, not a hung request.
///
/// With a `statement_timeout`, every connection is opened with that PostgreSQL setting: no
/// statement (a lock wait included) runs longer, so work whose request was already given up
/// on is cancelled by the server instead of finishing unseen.
pub fn pool(url: &str, max_size: usize, statement_timeout: Option<Duration>) -> PgPool {
    // Fast recycling: checking a connection with a query on every checkout would add a round
    // trip to every request; a dead connection fails its first query instead, is answered
    // as "database unavailable" and is not returned to the pool.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    if let Some(timeout) = statement_timeout {
        let set = format!("SET statement_timeout = {}", timeout.as_millis().max(1));
        config.custom_setup = Box::new(move |url| {
            let set = set.clone();
            Box::pin(async move {
                let mut conn = AsyncPgConnection::establish(url).await?;
                conn.batch_execute(&set)
                    .await
                    .map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
    }
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(3)))
        .build()
        .expect("a pool with a runtime and timeouts always builds")
}

/// Checks the database answers; the error text names what failed.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    let check = async {
        let mut conn = pool.get().await.map_err(|e: PoolError| e.to_string())?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

/// A hand-written statement that each connection prepares once and then only executes.
///
/// `diesel::sql_query` marks itself unsafe to cache, so every run of it is a parse, a plan
/// and a close on the server: on the relay's hot statements that was a large share of
/// PostgreSQL's work per batch, more so on an outbox partitioned by day, where planning
/// visits every partition. A `Statement` is cached by the connection under its text and bind
/// types, which is safe here because the text (table names included) is fixed when the
/// statement is built and never holds a value: values only travel as binds.
///
/// The text numbers its binds `$1`, `$2`, … in the order they first appear, each once, which
/// is the order [`Bound::bind`] takes them in.
#[derive(Clone, Debug)]
pub struct Statement {
    /// The text around the binds: one piece more than there are binds.
    pieces: Vec<String>,
}

impl Statement {
    /// Splits `sql` around `$1` … `$n`.
    ///
    /// # Panics
    /// If the binds are not numbered in order of appearance, each once: the text is the
    /// program's own, so that is a bug in it, not an input.
    pub fn new(sql: &str) -> Self {
        let mut pieces = Vec::new();
        let mut rest = sql;
        let mut n = 1;
        loop {
            let marker = format!("${n}");
            let Some(at) = find_bind(rest, &marker) else { break };
            pieces.push(rest[..at].to_owned());
            rest = &rest[at + marker.len()..];
            n += 1;
        }
        pieces.push(rest.to_owned());
        assert!(
            find_bind(rest, "$").is_none() && pieces.iter().all(|p| find_bind(p, "$").is_none()),
            "binds out of order in: {sql}"
        );
        Self { pieces }
    }

    /// The statement with its first bind.
    pub fn bind<'a, ST, V>(&'a self, value: V) -> Bound<'a>
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'a,
        ST: Send + 'a,
    {
        self.unbound().bind::<ST, V>(value)
    }

    /// The statement with no bind yet: as it is, for a statement that takes none.
    pub fn unbound(&self) -> Bound<'_> {
        Bound {
            statement: self,
            binds: Vec::with_capacity(self.pieces.len() - 1),
        }
    }
}

/// Where `marker` (`$n`, or `$` followed by any digit when `marker` is `"$"`) starts in
/// `text`, as a whole bind: `$1` is not found inside `$12`.
fn find_bind(text: &str, marker: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(marker) {
        let at = from + i;
        let end = at + marker.len();
        let digit_at = |k: usize| bytes.get(k).is_some_and(u8::is_ascii_digit);
        let whole = if marker == "$" { digit_at(end) } else { !digit_at(end) };
        if whole {
            return Some(at);
        }
        from = end;
    }
    None
}

/// A [`Statement`] and the values bound to it so far; run it with `diesel_async::RunQueryDsl`.
pub struct Bound<'a> {
    statement: &'a Statement,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'a>>,
}

impl<'a> Bound<'a> {
    /// Adds the next bind.
    pub fn bind<ST, V>(mut self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'a,
        ST: Send + 'a,
    {
        self.binds.push(Box::new(BindValue::<ST, V> {
            value,
            sql_type: PhantomData,
        }));
        self
    }
}

impl QueryFragment<Pg> for Bound<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let pieces = &self.statement.pieces;
        if self.binds.len() != pieces.len() - 1 {
            return Err(diesel::result::Error::QueryBuilderError(
                format!(
                    "{} values bound to a statement with {} binds",
                    self.binds.len(),
                    pieces.len() - 1
                )
                .into(),
            ));
        }
        for (i, piece) in pieces.iter().enumerate() {
            out.push_sql(piece);
            if let Some(bind) = self.binds.get(i) {
                bind.walk_ast(out.reborrow())?;
            }
        }
        Ok(())
    }
}

impl QueryId for Bound<'_> {
    // No static id: the connection's cache then keys the statement by its text and the types
    // of its binds.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Bound<'_> {
    type SqlType = Untyped;
}

/// One bound value; `push_bind_param` writes its `$n` into the text.
struct BindValue<ST, V> {
    value: V,
    sql_type: PhantomData<ST>,
}

impl<ST, V> QueryFragment<Pg> for BindValue<ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_split_around_its_binds_in_order() {
        let s = Statement::new("SELECT $1, x FROM t WHERE a = $2 AND b = ANY($3::int[])");
        assert_eq!(
            s.pieces,
            ["SELECT ", ", x FROM t WHERE a = ", " AND b = ANY(", "::int[])"]
        );
        // `$10` is the tenth bind, not `$1` followed by a 0.
        let many = Statement::new("SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11");
        assert_eq!(many.pieces.len(), 12);
    }

    #[test]
    fn binds_out_of_order_or_repeated_are_a_bug() {
        for sql in ["SELECT $2, $1", "SELECT $1, $1", "SELECT $1, $3", "SELECT $1 LIMIT $10"] {
            assert!(std::panic::catch_unwind(|| Statement::new(sql)).is_err(), "{sql}");
        }
    }

    #[test]
    fn the_text_is_given_back_with_the_binds_numbered() {
        let sql = "UPDATE t SET a = $1 WHERE id = ANY($2::bigint[]) AND b = $3";
        let s = Statement::new(sql);
        let bound = s
            .bind::<diesel::sql_types::Text, _>("x")
            .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(vec![1_i64])
            .bind::<diesel::sql_types::Integer, _>(3);
        assert_eq!(
            diesel::debug_query::<Pg, _>(&bound)
                .to_string()
                .split(" -- ")
                .next()
                .unwrap(),
            sql
        );
    }
}
