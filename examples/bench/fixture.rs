//! What the scenarios are built on: a copy of the sample tenant migrations,
//! tenants created from it, the sample table, and plain pools to compare with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_migrations::{EmbeddedMigrations, FileBasedMigrations, embed_migrations};
use diesel_tenancy::{NewTenant, SchemaName, Tenant, TenantPool, create_tenants};

use crate::Bench;

pub(crate) const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");

diesel::table! {
    customers (id) {
        id -> BigInt,
        name -> Text,
        email -> Text,
    }
}

/// A copy of the sample tenant migrations that the bench can add to.
pub(crate) struct TenantSet {
    dir: PathBuf,
}

impl TenantSet {
    pub(crate) fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("dt-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations_tenant");
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            std::fs::create_dir_all(dir.join(entry.file_name()))?;
            for file in std::fs::read_dir(entry.path())? {
                let file = file?;
                std::fs::copy(
                    file.path(),
                    dir.join(entry.file_name()).join(file.file_name()),
                )?;
            }
        }
        Ok(TenantSet { dir })
    }

    pub(crate) fn source(&self) -> Result<FileBasedMigrations> {
        Ok(FileBasedMigrations::from_path(&self.dir)?)
    }

    /// The up.sql of every migration, in order.
    pub(crate) fn up_sql(&self) -> Result<Vec<String>> {
        let mut dirs: Vec<_> = std::fs::read_dir(&self.dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        dirs.sort();
        dirs.iter()
            .map(|d| Ok(std::fs::read_to_string(d.join("up.sql"))?))
            .collect()
    }

    pub(crate) fn add(&self, name: &str, up: &str) -> Result<()> {
        let m = self.dir.join(name);
        std::fs::create_dir_all(&m)?;
        std::fs::write(m.join("up.sql"), up)?;
        std::fs::write(m.join("down.sql"), "")?;
        Ok(())
    }
}

impl Drop for TenantSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates tenants `<prefix>0..<prefix>N` on `pool` with `jobs` workers;
/// returns how long it took.
pub(crate) fn create_timed(
    pool: &TenantPool,
    set: &TenantSet,
    prefix: &str,
    n: usize,
    jobs: usize,
) -> Result<Duration> {
    let news: Vec<_> = (0..n)
        .map(|i| {
            Ok(NewTenant::new(
                SchemaName::new(&format!("{prefix}{i}"))?,
                format!("Tenant {i}"),
            ))
        })
        .collect::<Result<_>>()?;
    let source = set.source()?;
    let started = Instant::now();
    let results = create_tenants(pool, &news, &source, jobs);
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    ensure!(
        failed == 0,
        "{failed} tenants failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    Ok(elapsed)
}

/// Tenants t0..tN, each with one customer named after its schema.
pub(crate) fn tenants(b: &Bench) -> Result<Vec<Tenant>> {
    create_timed(&b.pool, &b.set, "t", b.n, b.jobs)?;
    let tenants = diesel_tenancy::registry::list_tenants(&mut *b.pool.public()?)?;
    for t in &tenants {
        b.pool.with_tenant(t, |conn| {
            diesel::insert_into(customers::table)
                .values((
                    customers::id.eq(1),
                    customers::name.eq(t.schema().as_str()),
                    customers::email.eq("owner@example.com"),
                ))
                .execute(conn)
        })?;
    }
    Ok(tenants)
}

/// The lookup every checkout runs: the name of customer 1.
pub(crate) fn lookup(conn: &mut PgConnection) -> QueryResult<String> {
    customers::table.find(1).select(customers::name).first(conn)
}

/// The memory of the connection's backend (`pg_backend_memory_contexts`), in bytes.
pub(crate) fn backend_bytes(conn: &mut PgConnection) -> QueryResult<i64> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts)",
    ))
    .get_result(conn)
}

/// A plain r2d2 pool.
pub(crate) type PlainPool = Pool<ConnectionManager<PgConnection>>;

/// Puts every new connection of a plain pool on one tenant's path.
#[derive(Debug)]
struct OnTenant(String);

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for OnTenant {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!("SET search_path TO {}, public", self.0))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// A plain r2d2 pool of `size` connections (its default liveness check) that
/// sit on `tenant`'s path.
pub(crate) fn plain_pool(url: &str, tenant: &Tenant, size: u32) -> Result<PlainPool> {
    Ok(Pool::builder()
        .max_size(size)
        .connection_customizer(Box::new(OnTenant(tenant.schema().quoted())))
        .build(ConnectionManager::<PgConnection>::new(url))?)
}
