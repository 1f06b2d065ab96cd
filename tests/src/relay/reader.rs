//! A PostgreSQL login role that may only read some tables of one test database, to check that
//! a command needs nothing more than SELECT. Roles belong to the whole server: each gets a
//! unique name and is dropped, with its grants, when the value is.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

use crate::test_db::{TestDatabase, server_url};

/// A role with `SELECT` on the tables it was given and no right to create anything.
pub struct ReadOnlyRole {
    name: String,
    url: String,
    db_url: String,
}

impl ReadOnlyRole {
    /// Creates the role and grants it `SELECT` on `tables` of `db`.
    pub async fn new(db: &TestDatabase, tables: &[&str]) -> Self {
        let name = format!("reader_{}", uuid::Uuid::new_v4().simple());
        let mut conn = db.conn().await;
        // PostgreSQL 15 already keeps CREATE on `public` from PUBLIC; said here so that the
        // role cannot create even on a server configured otherwise.
        conn.batch_execute(&format!(
            "CREATE ROLE {name} LOGIN; \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             REVOKE CREATE, TEMPORARY ON DATABASE {} FROM PUBLIC; \
             GRANT SELECT ON {} TO {name};",
            db.name(),
            tables.join(", ")
        ))
        .await
        .expect("create the read-only role");
        // The server's URL with this role as its user (the local server trusts every role).
        let server = server_url();
        let (scheme, rest) = server.split_once("://").expect("a URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let url = format!("{scheme}://{name}@{host}/{}", db.name());
        Self {
            name,
            url,
            db_url: db.url().to_owned(),
        }
    }

    /// `DATABASE_URL` for connecting as this role.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ReadOnlyRole {
    fn drop(&mut self) {
        let (name, db_url) = (self.name.clone(), self.db_url.clone());
        crate::run_aside(async move {
            // A role cannot be dropped while it holds grants in a database.
            if let Ok(mut c) = AsyncPgConnection::establish(&db_url).await {
                let _ = c
                    .batch_execute(&format!("DROP OWNED BY {name}; DROP ROLE {name}"))
                    .await;
            }
        });
    }
}
