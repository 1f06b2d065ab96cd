//! The PostgreSQL connection pool shared by a service's handlers.

use std::time::Duration;

use diesel::ConnectionError;
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
