//! Shared migrations on `public`, tenant migrations on every tenant schema.

mod apply;
mod report;
mod statements;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::conn::PgConn;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

pub use apply::LockMode;
pub(crate) use apply::{MigrationSet, Target, apply_in_transaction};
pub use report::{MigrationError, MigrationReport, Outcome, TenantReport, Totals};

use apply::{ApplySettings, apply, apply_fast, pending_versions, plan};

#[cfg(feature = "sync")]
use crate::TenantPool;
use crate::citus::{self, ClusterMode};
use crate::conn::Sessions;
use crate::parallel;
use crate::{Error, Result, SchemaName, Tenant, registry};

fn outcome_to_result(schema: &str, outcome: Outcome) -> Result<Vec<String>> {
    match outcome {
        Outcome::Applied { versions, .. } => Ok(versions),
        Outcome::UpToDate => Ok(Vec::new()),
        Outcome::Failed { version, error, .. } => Err(Error::Migration {
            schema: schema.to_owned(),
            version,
            source: error.into(),
        }),
        Outcome::SchemaNotOnPath {
            schema: expected,
            version,
            current_schema,
            ..
        } => Err(Error::Migration {
            schema: schema.to_owned(),
            source: report::not_on_path(&expected, &version, current_schema.as_deref()).into(),
            version: Some(version),
        }),
        Outcome::SchemaMissing => Err(Error::SchemaMissing {
            schema: schema.to_owned(),
        }),
        Outcome::Locked => Err(Error::SchemaLocked {
            schema: schema.to_owned(),
        }),
        Outcome::Pending { .. } | Outcome::NotRun => Ok(Vec::new()),
    }
}

/// Installs the registry, then applies the pending migrations of the shared set on
/// `public`, in one transaction, with only `public` on the search path. Returns
/// the versions applied.
pub fn run_shared_migrations<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    shared: S,
) -> Result<Vec<String>> {
    registry::install(conn)?;
    let set = MigrationSet::load(&shared, "public")?;
    let settings = settings_for(conn)?;
    let outcome = apply(conn, Target::Public, &set, &settings);
    outcome_to_result("public", outcome)
}

/// Applies the pending migrations of the tenant set to one tenant, in one
/// transaction (all or nothing), with only its schema on the search path, so
/// nothing can land in `public` and the schema keeps its own ledger. Returns the
/// versions applied; fails if the schema is missing.
pub fn run_tenant_migrations<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    tenant: &Tenant,
    migrations: S,
) -> Result<Vec<String>> {
    let set = MigrationSet::load(&migrations, tenant.schema().as_str())?;
    let target = Target::Tenant {
        schema: tenant.schema(),
        id: tenant.id(),
    };
    let settings = settings_for(conn)?;
    let outcome = apply(conn, target, &set, &settings);
    outcome_to_result(tenant.schema().as_str(), outcome)
}

/// Default settings for the database's mode.
fn settings_for(conn: &mut impl PgConn) -> Result<ApplySettings> {
    Ok(ApplySettings {
        split: citus::detect(conn)? == ClusterMode::Citus,
        ..ApplySettings::default()
    })
}

/// The versions of `set` not yet applied to `target` (reads its ledger).
pub(crate) fn pending_versions_of(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
) -> Result<Vec<String>> {
    match pending_versions(conn, target, set) {
        Ok(Some(versions)) => Ok(versions),
        Ok(None) => Err(Error::SchemaMissing {
            schema: match target {
                Target::Public => "public".to_owned(),
                Target::Tenant { schema, .. } => schema.as_str().to_owned(),
            },
        }),
        Err(error) => Err(Error::Migration {
            schema: target.name().to_owned(),
            version: None,
            source: error.into(),
        }),
    }
}

/// A progress event of [`Migrator::migrate_all`], for command-line tools and logs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The shared set finished.
    Shared {
        /// What happened on `public`.
        outcome: &'a Outcome,
    },
    /// Work on a tenant started.
    Started {
        /// The tenant's schema.
        schema: &'a SchemaName,
        /// Tenants started so far, this one included.
        started: usize,
        /// Tenants that need work in this run.
        total: usize,
    },
    /// Work on a tenant finished.
    Finished {
        /// What happened.
        report: &'a TenantReport,
        /// Tenants finished so far, this one included.
        done: usize,
        /// Tenants that need work in this run.
        total: usize,
    },
}

type ProgressFn = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// Options of [`Migrator::migrate_all`]. Every option has a default, documented
/// on its method.
#[derive(Clone)]
#[must_use]
pub struct MigrateOptions {
    jobs: Option<usize>,
    fail_fast: bool,
    tenants: Option<Vec<SchemaName>>,
    include_suspended: bool,
    shared: bool,
    dry_run: bool,
    verify: bool,
    lock: LockMode,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    recycle_after: usize,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for MigrateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateOptions")
            .field("jobs", &self.jobs)
            .field("fail_fast", &self.fail_fast)
            .field("tenants", &self.tenants)
            .field("include_suspended", &self.include_suspended)
            .field("shared", &self.shared)
            .field("dry_run", &self.dry_run)
            .field("verify", &self.verify)
            .field("lock", &self.lock)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("recycle_after", &self.recycle_after)
            .finish_non_exhaustive()
    }
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            jobs: None,
            fail_fast: false,
            tenants: None,
            include_suspended: false,
            shared: true,
            dry_run: false,
            verify: false,
            lock: LockMode::Wait,
            lock_timeout: None,
            statement_timeout: None,
            recycle_after: parallel::RECYCLE_AFTER_SCHEMAS,
            progress: None,
        }
    }
}

impl MigrateOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tenants migrated in parallel, each on its own connection. Defaults to half
    /// the pool's size, between 1 and 4.
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = Some(jobs.max(1));
        self
    }

    /// Stop at the first failing tenant (the rest are reported as
    /// [`Outcome::NotRun`]). Defaults to `false`: carry on and report.
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Only these tenants (whatever their status). Defaults to every active tenant.
    pub fn tenants(mut self, schemas: impl IntoIterator<Item = SchemaName>) -> Self {
        self.tenants = Some(schemas.into_iter().collect());
        self
    }

    /// Migrate suspended tenants too. Defaults to `false`.
    pub fn include_suspended(mut self, include: bool) -> Self {
        self.include_suspended = include;
        self
    }

    /// Run the shared set on `public` first. Defaults to `true`.
    pub fn shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// Apply nothing; report what is pending per tenant ([`Outcome::Pending`]).
    /// Defaults to `false`.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Read every tenant's own ledger instead of trusting the journal's record
    /// that it is up to date. Defaults to `false`.
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Wait for, or skip, a schema another run is migrating. Defaults to
    /// [`LockMode::Wait`].
    pub fn lock_mode(mut self, mode: LockMode) -> Self {
        self.lock = mode;
        self
    }

    /// `lock_timeout` while migrating a schema (the advisory lock included).
    /// Defaults to the server's setting.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// `statement_timeout` while migrating a schema. Defaults to the server's
    /// setting.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// Replace a worker's connection after it has migrated this many schemas,
    /// since a backend keeps the catalog entries of every schema it touched.
    /// Defaults to 250.
    pub fn recycle_after(mut self, schemas: usize) -> Self {
        self.recycle_after = schemas.max(1);
        self
    }

    /// Called as the run progresses, from the worker threads.
    pub fn on_progress(mut self, f: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    fn settings(&self, mode: ClusterMode) -> ApplySettings {
        ApplySettings {
            lock: self.lock,
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            split: mode == ClusterMode::Citus,
        }
    }

    fn notify(&self, event: Progress<'_>) {
        if let Some(f) = &self.progress {
            f(&event);
        }
    }
}

/// Runs an application's two migration sets: the shared set on `public` and the
/// tenant set on every tenant schema.
///
/// Both are any Diesel [`MigrationSource`]: `embed_migrations!` sets, or
/// `FileBasedMigrations` read at run time.
///
/// Cloning is cheap: the sets are shared, not copied.
#[derive(Debug)]
pub struct Migrator<S, T> {
    shared: Arc<S>,
    tenant: Arc<T>,
}

impl<S, T> Clone for Migrator<S, T> {
    fn clone(&self) -> Self {
        Migrator {
            shared: Arc::clone(&self.shared),
            tenant: Arc::clone(&self.tenant),
        }
    }
}

#[derive(QueryableByName)]
struct TenantRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    set_digest: Option<String>,
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
            let set = MigrationSet::load(&*self.shared, "public")?;
            let outcome = if options.dry_run {
                plan(&mut conn, Target::Public, &set)
            } else {
                match registry::install(&mut conn) {
                    Ok(()) => apply(&mut conn, Target::Public, &set, &settings),
                    Err(e) => Outcome::Failed {
                        version: None,
                        error: MigrationError::new(e),
                        applied: Vec::new(),
                    },
                }
            };
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
        let rows = diesel::sql_query(
            "SELECT t.id, t.schema_name, t.status, j.set_digest \
             FROM public.tenancy_tenants t \
             LEFT JOIN public.tenancy_migration_journal j ON j.tenant_id = t.id \
             ORDER BY t.schema_name",
        )
        .load::<TenantRow>(&mut conn)
        .map_err(Error::db("list tenants to migrate"))?;
        drop(conn);

        let chosen = |row: &TenantRow| match &options.tenants {
            Some(list) => list.iter().any(|s| s.as_str() == row.schema_name),
            None => row.status == "active" || options.include_suspended,
        };
        if let Some(list) = &options.tenants {
            if let Some(missing) = list
                .iter()
                .find(|s| !rows.iter().any(|r| r.schema_name == s.as_str()))
            {
                return Err(Error::TenantNotFound {
                    schema: missing.as_str().to_owned(),
                });
            }
        }
        let mut work = Vec::new();
        for row in rows.into_iter().filter(|r| chosen(r)) {
            let schema =
                SchemaName::try_from(row.schema_name).map_err(|e| Error::CorruptRegistry {
                    reason: e.to_string(),
                })?;
            let up_to_date = row.set_digest.as_deref() == Some(set.digest());
            if up_to_date && !options.verify {
                report.decided_by_journal += 1;
                report.tenants.push(TenantReport {
                    tenant_id: row.id,
                    schema,
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
                let known = row.set_digest.as_deref().and_then(|d| set.known_prefix(d));
                work.push((row.id, schema, known));
            }
        }
        drop(set);

        let (done, connections) = self.run_workers(pool, options, &settings, &work);
        report.connections += connections;
        report.tenants.extend(done);
        report.tenants.sort_by(|a, b| a.schema.cmp(&b.schema));
        report.elapsed = started.elapsed();
        Ok(report)
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
        work: &[(i64, SchemaName, Option<usize>)],
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

/// An error and its causes, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
