//! A database of its own for each test, on the server at `DATABASE_URL` or in
//! the process's throwaway cluster, and the pools made on it.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;

use super::TestingError;
use super::cluster::shared_cluster;
use super::error::db_err;
use super::supervisor::unique_suffix;
use crate::{SchemaName, TenantPool, TenantPoolBuilder, run_shared_migrations};

/// A database of its own for one test (or one example run).
///
/// Made on the server at `DATABASE_URL` if set (and dropped again when this value
/// is dropped), otherwise in the process's throwaway cluster.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    admin_url: String,
    name: SchemaName,
    external: bool,
}

impl TestDatabase {
    /// Creates a fresh, empty database.
    pub fn new() -> Result<TestDatabase, TestingError> {
        let (admin_url, external) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => (url, true),
            _ => (shared_cluster()?.admin_url().to_owned(), false),
        };
        let name = fresh_database_name("dt_test");
        let mut admin = PgConnection::establish(&admin_url)
            .map_err(db_err("connect to the PostgreSQL server for tests"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", name.quoted()))
            .map_err(db_err(format!("create test database {name}")))?;
        let url = database_url_for(&admin_url, name.as_str())?;
        Ok(TestDatabase {
            url,
            admin_url,
            name,
            external,
        })
    }

    /// The database's connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool builder for this database, with a small pool (4 connections) and a
    /// short checkout timeout (10 seconds).
    pub fn pool_builder(&self) -> TenantPoolBuilder {
        small_pool_builder(&self.url)
    }

    /// A pool on this database, with the registry installed and the shared
    /// migrations run.
    pub fn migrated_pool<S: MigrationSource<Pg>>(
        &self,
        shared_migrations: S,
    ) -> Result<TenantPool, TestingError> {
        migrated(self.pool_builder(), shared_migrations)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.external {
            if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
                let _ = admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name.quoted()
                ));
            }
        }
    }
}

/// A database name no other test database has: `<prefix>_<pid>_<unique suffix>`.
pub(super) fn fresh_database_name(prefix: &str) -> SchemaName {
    SchemaName::new(&format!(
        "{prefix}_{}_{}",
        std::process::id(),
        unique_suffix()
    ))
    .expect("generated database names are valid identifiers")
}

/// `admin_url` pointed at database `name`.
pub(super) fn database_url_for(admin_url: &str, name: &str) -> Result<String, TestingError> {
    if admin_url.contains("://") {
        let mut url = url::Url::parse(admin_url).map_err(db_err("parse DATABASE_URL"))?;
        url.set_path(&format!("/{name}"));
        Ok(url.into())
    } else {
        // A libpq key=value string: the last dbname wins.
        Ok(format!("{admin_url} dbname={name}"))
    }
}

/// Builds the pools of [`TestDatabase`] and
/// [`CitusDatabase`](super::CitusDatabase).
pub(super) fn small_pool_builder(url: &str) -> TenantPoolBuilder {
    TenantPool::builder(url.to_owned())
        .max_size(4)
        .connection_timeout(Duration::from_secs(10))
}

/// A pool from `builder`, with the registry installed and `shared_migrations` run.
pub(super) fn migrated<S: MigrationSource<Pg>>(
    builder: TenantPoolBuilder,
    shared_migrations: S,
) -> Result<TenantPool, TestingError> {
    let pool = builder.build()?;
    pool.with_public(|conn| run_shared_migrations(conn, shared_migrations))?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_point_at_the_new_database() {
        assert_eq!(
            database_url_for("postgres://u:p@h:5/postgres?sslmode=disable", "dt_x").unwrap(),
            "postgres://u:p@h:5/dt_x?sslmode=disable"
        );
        assert_eq!(
            database_url_for("host=/tmp port=5", "dt_x").unwrap(),
            "host=/tmp port=5 dbname=dt_x"
        );
    }
}
