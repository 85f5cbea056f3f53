//! The [`Migrator`]: the shared set on `public`, the tenant set on every
//! tenant, one tenant at a time on a bounded number of connections.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::migration::MigrationSource;
use diesel::pg::Pg;

use crate::citus::{self, ClusterMode};
use crate::conn::{PgConn, Sessions};
use crate::{Error, Result, SchemaName, Tenant, TenantStatus, parallel, registry};

use diesel::prelude::*;

#[cfg(feature = "sync")]
use crate::TenantPool;

/// Runs an application's two migration sets: the shared set on `public` and the
/// tenant set on every tenant schema.
///
/// Both are any Diesel [`MigrationSource`]: `embed_migrations!` sets, or
/// `FileBasedMigrations` read at run time.
///
/// Cloning is cheap: the sets are shared, not copied.
#[derive(Debug)]
pub struct Migrator<S, T> {
    pub(super) shared: Arc<S>,
    pub(super) tenant: Arc<T>,
}

impl<S, T> Clone for Migrator<S, T> {
    fn clone(&self) -> Self {
        Migrator {
            shared: Arc::clone(&self.shared),
            tenant: Arc::clone(&self.tenant),
        }
    }
}

impl<S, T> Migrator<S, T>
where
    S: MigrationSource<Pg> + Sync,
    T: MigrationSource<Pg> + Sync,
{
    /// A migrator for a shared set and a tenant set.
    pub fn new(shared: S, tenant: T) -> Self {
        Migrator {
            shared: Arc::new(shared),
            tenant: Arc::new(tenant),
        }
    }

    /// The tenant set, for tenant creation.
    pub fn tenant_migrations(&self) -> &T {
        &self.tenant
    }

    /// Refuses to go on if `public`'s migration ledger records versions of the
    /// tenant set (and not of the shared set): the tenant set was run on
    /// `public` (say, `run_pending_migrations(TENANT)` on a plain borrow), so
    /// tenant tables sit in `public`, where every tenant sees them.
    fn refuse_tenant_set_in_public(&self, conn: &mut impl PgConn) -> Result<()> {
        #[derive(diesel::QueryableByName)]
        struct Version {
            #[diesel(sql_type = diesel::sql_types::Text)]
            version: String,
        }
        let shared = MigrationSet::load(&*self.shared, "public")?;
        let tenant = MigrationSet::load(&*self.tenant, "public")?;
        let has_ledger: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "to_regclass('public.__diesel_schema_migrations') IS NOT NULL",
        ))
        .get_result(conn)
        .map_err(Error::db("look for public's migration ledger"))?;
        if !has_ledger {
            // Nothing was ever run on public.
            return Ok(());
        }
        let applied: Vec<Version> =
            diesel::sql_query("SELECT version FROM public.__diesel_schema_migrations")
                .load(conn)
                .map_err(Error::db("read public's migration ledger"))?;
        let misplaced: Vec<&str> = applied
            .iter()
            .map(|v| v.version.as_str())
            .filter(|v| {
                tenant.versions().iter().any(|t| t == v)
                    && !shared.versions().iter().any(|s| s == v)
            })
            .collect();
        if misplaced.is_empty() {
            return Ok(());
        }
        Err(Error::TenantSetInPublic {
            versions: misplaced.into_iter().map(str::to_owned).collect(),
        })
    }

    /// Installs the registry, then applies the shared set to `public`.
    /// Returns the versions applied. Refuses to run if `public`'s ledger shows
    /// the tenant set was applied there.
    #[cfg(feature = "sync")]
    pub fn migrate_shared(&self, pool: &TenantPool) -> Result<Vec<String>> {
        self.migrate_shared_with(pool)
    }

    pub(crate) fn migrate_shared_with<P: Sessions>(&self, pool: &P) -> Result<Vec<String>> {
        let mut conn = pool.session()?;
        self.refuse_tenant_set_in_public(&mut conn)?;
        registry::install(&mut conn)?;
        let set = MigrationSet::load(&*self.shared, "public")?;
        let settings = settings_for(&mut conn)?;
        let outcome = apply(&mut conn, Target::Public, &set, &settings);
        outcome_to_result("public", outcome)
    }

    /// Applies the tenant set to one tenant. Returns the versions applied.
    #[cfg(feature = "sync")]
    pub fn migrate_tenant(&self, pool: &TenantPool, tenant: &Tenant) -> Result<Vec<String>> {
        self.migrate_tenant_with(pool, tenant)
    }

    pub(crate) fn migrate_tenant_with<P: Sessions>(
        &self,
        pool: &P,
        tenant: &Tenant,
    ) -> Result<Vec<String>> {
        let set = MigrationSet::load(&*self.tenant, tenant.schema().as_str())?;
        let target = Target::Tenant {
            schema: tenant.schema(),
            id: tenant.id(),
        };
        let mut conn = pool.session()?;
        let settings = settings_for(&mut conn)?;
        let outcome = apply(&mut conn, target, &set, &settings);
        outcome_to_result(tenant.schema().as_str(), outcome)
    }

    /// The shared set, then the tenant set on every active tenant (or the chosen
    /// ones), in parallel; see [`MigrateOptions`].
    ///
    /// Returns a report even when tenants failed ([`MigrationReport::into_result`]
    /// turns failures into an error). Fails outright only when the run cannot
    /// start: no connection, an unreadable registry, or a chosen tenant that is
    /// not registered.
    ///
    /// Tenants the journal records as having the current set fully applied are
    /// decided in the same single query that lists the tenants, so a run with
    /// nothing pending costs one query (plus the shared set and the check of
    /// `public`'s ledger).
    #[cfg(feature = "sync")]
    pub fn migrate_all(
        &self,
        pool: &TenantPool,
        options: &MigrateOptions,
    ) -> Result<MigrationReport> {
        self.migrate_all_with(pool, options)
    }

    pub(crate) fn migrate_all_with<P: Sessions>(
        &self,
        pool: &P,
        options: &MigrateOptions,
    ) -> Result<MigrationReport> {
        let started = Instant::now();
        let mut report = MigrationReport {
            shared: None,
            tenants: Vec::new(),
            dry_run: options.dry_run,
            decided_by_journal: 0,
            mode: ClusterMode::Single,
            connections: 0,
            elapsed: Duration::ZERO,
        };
        let mut conn = pool.session()?;
        report.connections += 1;
        self.refuse_tenant_set_in_public(&mut conn)?;
        report.mode = citus::detect(&mut conn)?;
        let settings = options.settings(report.mode);
        if options.shared {
            let outcome = self.shared_step(&mut conn, options, &settings)?;
            options.notify(Progress::Shared { outcome: &outcome });
            let failed = outcome.is_failure();
            report.shared = Some(outcome);
            if failed {
                report.elapsed = started.elapsed();
                return Ok(report);
            }
        }

        let set = MigrationSet::load(&*self.tenant, "tenant set")?;
        if options.dry_run && registry::installed_version(&mut conn)? < registry::REGISTRY_VERSION {
            // A plan on a database the registry has not reached (or not fully):
            // there are no tenants to read, and nothing may be installed.
            if let Some(list) = options.tenants.as_ref().and_then(|l| l.first()) {
                return Err(Error::TenantNotFound {
                    schema: list.as_str().to_owned(),
                });
            }
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        let rows = registry::check_journal(&mut conn, report.mode != ClusterMode::Citus)?;
        drop(conn);

        let work = choose(rows, &set, options, &mut report)?;
        drop(set);

        let (done, connections) = self.run_workers(pool, options, &settings, &work);
        report.connections += connections;
        report.tenants.extend(done);
        report.tenants.sort_by(|a, b| a.schema.cmp(&b.schema));
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The shared set's step of a run: planned, or the registry installed and
    /// the set applied to `public`.
    fn shared_step(
        &self,
        conn: &mut impl PgConn,
        options: &MigrateOptions,
        settings: &ApplySettings,
    ) -> Result<Outcome> {
        let set = MigrationSet::load(&*self.shared, "public")?;
        Ok(if options.dry_run {
            plan(conn, Target::Public, &set)
        } else {
            match registry::install(conn) {
                Ok(()) => apply(conn, Target::Public, &set, settings),
                Err(e) => Outcome::Failed {
                    version: None,
                    error: MigrationError::new(e),
                    applied: Vec::new(),
                },
            }
        })
    }

    /// [`migrate_all`](Self::migrate_all) as a dry run: what is pending where.
    #[cfg(feature = "sync")]
    pub fn plan(&self, pool: &TenantPool, options: &MigrateOptions) -> Result<MigrationReport> {
        self.migrate_all_with(pool, &options.clone().dry_run(true))
    }

    fn run_workers<P: Sessions>(
        &self,
        pool: &P,
        options: &MigrateOptions,
        settings: &ApplySettings,
        work: &[Work],
    ) -> (Vec<TenantReport>, usize) {
        let jobs = options
            .jobs
            .unwrap_or_else(|| (pool.max_size() / 2).clamp(1, 4));
        let started = AtomicUsize::new(0);
        let finished = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let total = work.len();
        let tenant_set: &T = &self.tenant;
        parallel::run(
            pool,
            work,
            jobs,
            options.recycle_after,
            || MigrationSet::load(tenant_set, "tenant set"),
            |set, worker, (id, schema, known)| {
                let report = |outcome, elapsed| TenantReport {
                    tenant_id: *id,
                    schema: schema.clone(),
                    outcome,
                    elapsed,
                };
                if stop.load(Ordering::Relaxed) {
                    return report(Outcome::NotRun, Duration::ZERO);
                }
                let t0 = Instant::now();
                options.notify(Progress::Started {
                    schema,
                    started: started.fetch_add(1, Ordering::Relaxed) + 1,
                    total,
                });
                let target = Target::Tenant { schema, id: *id };
                let outcome = match (set.as_ref(), worker.conn()) {
                    (Err(e), _) => Outcome::Failed {
                        version: None,
                        error: MigrationError::new(error_chain(e)),
                        applied: Vec::new(),
                    },
                    (_, Err(e)) => Outcome::Failed {
                        version: None,
                        error: MigrationError::new(e),
                        applied: Vec::new(),
                    },
                    (Ok(set), Ok(c)) if options.dry_run => plan(c, target, set),
                    (Ok(set), Ok(c)) => known
                        .and_then(|k| apply_fast(c, target, set, k, settings))
                        .unwrap_or_else(|| apply(c, target, set, settings)),
                };
                if outcome.is_failure() && options.fail_fast {
                    stop.store(true, Ordering::Relaxed);
                }
                let done = report(outcome, t0.elapsed());
                options.notify(Progress::Finished {
                    report: &done,
                    done: finished.fetch_add(1, Ordering::Relaxed) + 1,
                    total,
                });
                done
            },
            // A worker that panicked lost its entries: report them, never drop them.
            |(id, schema, _)| TenantReport {
                tenant_id: *id,
                schema: schema.clone(),
                outcome: Outcome::Failed {
                    version: None,
                    error: "the migration worker panicked".into(),
                    applied: Vec::new(),
                },
                elapsed: Duration::ZERO,
            },
        )
    }
}

/// The async side: the same runs on an [`AsyncTenantPool`](crate::AsyncTenantPool),
/// on tokio's blocking threads (never a runtime worker), without libpq.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
impl<S, T> Migrator<S, T>
where
    S: MigrationSource<Pg> + Send + Sync + 'static,
    T: MigrationSource<Pg> + Send + Sync + 'static,
{
    async fn on_blocking_threads<R: Send + 'static>(
        &self,
        pool: &crate::AsyncTenantPool,
        run: impl FnOnce(&Self, &crate::pool::async_pool::AsyncSessions) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let sessions = pool.sessions(tokio::runtime::Handle::current());
        let me = self.clone();
        tokio::task::spawn_blocking(move || run(&me, &sessions))
            .await
            .map_err(|e| Error::TaskFailed {
                task: "the migration run".into(),
                reason: e.to_string(),
            })?
    }

    /// [`migrate_all`](Self::migrate_all) on an async pool, with the same
    /// guarantees (a transaction and the schema's lock per tenant, the journal,
    /// the report). The run's threads come from tokio's blocking pool; its
    /// statements are driven by the runtime, so it needs the multi-thread
    /// runtime.
    pub async fn migrate_all_async(
        &self,
        pool: &crate::AsyncTenantPool,
        options: &MigrateOptions,
    ) -> Result<MigrationReport> {
        let options = options.clone();
        self.on_blocking_threads(pool, move |me, sessions| {
            me.migrate_all_with(sessions, &options)
        })
        .await
    }

    /// [`migrate_shared`](Self::migrate_shared) on an async pool.
    pub async fn migrate_shared_async(&self, pool: &crate::AsyncTenantPool) -> Result<Vec<String>> {
        self.on_blocking_threads(pool, |me, sessions| me.migrate_shared_with(sessions))
            .await
    }

    /// [`migrate_tenant`](Self::migrate_tenant) on an async pool.
    pub async fn migrate_tenant_async(
        &self,
        pool: &crate::AsyncTenantPool,
        tenant: &Tenant,
    ) -> Result<Vec<String>> {
        let tenant = tenant.clone();
        self.on_blocking_threads(pool, move |me, sessions| {
            me.migrate_tenant_with(sessions, &tenant)
        })
        .await
    }

    /// [`plan`](Self::plan) on an async pool.
    pub async fn plan_async(
        &self,
        pool: &crate::AsyncTenantPool,
        options: &MigrateOptions,
    ) -> Result<MigrationReport> {
        self.migrate_all_async(pool, &options.clone().dry_run(true))
            .await
    }
}

/// One tenant a run must visit: its id, schema, and how many of the set's
/// migrations the journal says it has (for the one-batch step).
type Work = (i64, SchemaName, Option<usize>);

/// The tenants a run visits, from the registry's listing: those the options
/// choose (every active tenant by default), minus those the journal shows
/// up to date with `set` (reported as such at once, unless `verify`).
/// A tenant named in the options but not registered is an error.
fn choose(
    rows: Vec<registry::JournalCheck>,
    set: &MigrationSet,
    options: &MigrateOptions,
    report: &mut MigrationReport,
) -> Result<Vec<Work>> {
    if let Some(list) = &options.tenants {
        if let Some(missing) = list.iter().find(|s| !rows.iter().any(|r| &r.schema == *s)) {
            return Err(Error::TenantNotFound {
                schema: missing.as_str().to_owned(),
            });
        }
    }
    let chosen = |row: &registry::JournalCheck| match &options.tenants {
        Some(list) => list.contains(&row.schema),
        None => row.status == TenantStatus::Active || options.include_suspended,
    };
    let mut work = Vec::new();
    for row in rows.into_iter().filter(|r| chosen(r)) {
        // The journal decides only where the catalog and the ledger agree with it.
        let up_to_date = row.set_digest.as_deref() == Some(set.digest()) && row.agrees();
        if up_to_date && !options.verify {
            report.decided_by_journal += 1;
            report.tenants.push(TenantReport {
                tenant_id: row.tenant_id,
                schema: row.schema,
                outcome: if options.dry_run {
                    Outcome::Pending {
                        versions: Vec::new(),
                    }
                } else {
                    Outcome::UpToDate
                },
                elapsed: Duration::ZERO,
            });
        } else {
            let known = row
                .set_digest
                .as_deref()
                .filter(|_| row.agrees())
                .and_then(|d| set.known_prefix(d));
            work.push((row.tenant_id, row.schema, known));
        }
    }
    Ok(work)
}
