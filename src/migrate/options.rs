//! What a migration run is asked to do, and the progress it reports.

use super::*;
use std::sync::Arc;
use std::time::Duration;

use crate::citus::ClusterMode;
use crate::{SchemaName, parallel};

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

pub(super) type ProgressFn = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// Options of [`Migrator::migrate_all`]. Every option has a default, documented
/// on its method.
#[derive(Clone)]
#[must_use]
pub struct MigrateOptions {
    pub(super) jobs: Option<usize>,
    pub(super) fail_fast: bool,
    pub(super) tenants: Option<Vec<SchemaName>>,
    pub(super) include_suspended: bool,
    pub(super) shared: bool,
    pub(super) dry_run: bool,
    pub(super) verify: bool,
    pub(super) lock: LockMode,
    pub(super) lock_timeout: Option<Duration>,
    pub(super) statement_timeout: Option<Duration>,
    pub(super) recycle_after: usize,
    pub(super) progress: Option<ProgressFn>,
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

    pub(super) fn settings(&self, mode: ClusterMode) -> ApplySettings {
        ApplySettings {
            lock: self.lock,
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            split: mode == ClusterMode::Citus,
        }
    }

    pub(super) fn notify(&self, event: Progress<'_>) {
        if let Some(f) = &self.progress {
            f(&event);
        }
    }
}
