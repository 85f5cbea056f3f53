//! Test support: a throwaway PostgreSQL cluster, a database per test, and tenant
//! fixtures (the equivalent of django-tenants' `TenantTestCase`), and
//! [`FastTenant`], one tenant per test process with a rolled-back transaction
//! per test (django-tenants' `FastTenantTestCase`).
//!
//! [`TestDatabase::new`] gives each test its own database, so tests run in
//! parallel. With `DATABASE_URL` set, the databases are made on that server and
//! dropped afterwards. Without it, the first call starts a private cluster from
//! the machine's PostgreSQL binaries (found on `PATH` or under
//! `/usr/lib/postgresql/<version>/bin`), with its data and socket in a temporary
//! directory (under `/dev/shm` when there is one, so in memory), a free loopback
//! port below the kernel's ephemeral port range (another is tried if the server
//! cannot bind it) and durability turned off; when the process
//! ends, however it ends, the cluster is stopped and its directory removed. Run as
//! root, the server runs as the `postgres` system user, since PostgreSQL refuses
//! to run as root.
//!
//! ```no_run
//! use diesel_tenancy::testing::{self, TestDatabase};
//! use diesel_migrations::{EmbeddedMigrations, embed_migrations};
//!
//! const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
//! const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = TestDatabase::new()?;
//! let pool = db.migrated_pool(SHARED)?;
//! let acme = testing::create_tenant(&pool, "acme", TENANT)?;
//! let conn = pool.get(&acme)?;
//! # Ok(()) }
//! ```
//!
//! [`CitusDatabase::new`] does the same on a Citus cluster (a coordinator and
//! workers, with schema-based sharding on, so every tenant schema is
//! distributed): on the cluster whose coordinator `DIESEL_TENANCY_CITUS_URL`
//! names, if set; otherwise, when the Citus extension is installed
//! ([`citus_installed`]), on a throwaway [`CitusCluster`] of a coordinator and
//! two workers, each started like the cluster above.

mod citus;
mod cluster;
mod database;
mod error;
mod fast;
mod fixtures;
mod pgbouncer;
mod ports;
mod sql;
mod supervisor;

pub use citus::{
    CitusCluster, CitusDatabase, citus_installed, citus_required, shared_citus_cluster,
};
pub use cluster::{TestCluster, shared_cluster};
pub use database::TestDatabase;
pub use error::TestingError;
pub use fast::{FastTenant, FastTenantHook, FastTenantOptions};
pub use fixtures::{create_tenant, tenant_host};
pub use pgbouncer::PgBouncer;
