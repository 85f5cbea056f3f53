//! One closure in every tenant: [`TenantPool::for_each_tenant`] and
//! [`AsyncTenantPool::for_each_tenant`]. Each tenant's call gets its own
//! connection, scoped to the tenant as [`TenantPool::with_tenant`] scopes it,
//! and its own transaction; at most `jobs` run at once; the result is a
//! report per tenant, in schema order.
//!
//! [`TenantPool::for_each_tenant`]: crate::TenantPool::for_each_tenant
//! [`TenantPool::with_tenant`]: crate::TenantPool::with_tenant
//! [`AsyncTenantPool::for_each_tenant`]: crate::AsyncTenantPool::for_each_tenant

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{Nullable, Oid, Text};

use crate::{Error, Result, SchemaName, Tenant, TenantStatus};

/// Options of `for_each_tenant` ([`TenantPool::for_each_tenant`],
/// [`AsyncTenantPool::for_each_tenant`]). Every option has a default,
/// documented on its method.
///
/// [`TenantPool::for_each_tenant`]: crate::TenantPool::for_each_tenant
/// [`AsyncTenantPool::for_each_tenant`]: crate::AsyncTenantPool::for_each_tenant
#[derive(Clone, Default)]
#[must_use]
pub struct ForEachOptions {
    jobs: Option<usize>,
    fail_fast: bool,
    tenants: Option<Vec<SchemaName>>,
    include_suspended: bool,
    status: Option<TenantStatus>,
    progress: Option<ProgressFn>,
}

type ProgressFn = Arc<dyn Fn(&ForEachProgress<'_>) + Send + Sync>;

impl fmt::Debug for ForEachOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForEachOptions")
            .field("jobs", &self.jobs)
            .field("fail_fast", &self.fail_fast)
            .field("tenants", &self.tenants)
            .field("include_suspended", &self.include_suspended)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ForEachOptions {
    /// The defaults: every active tenant, half the pool's size at once
    /// (between 1 and 4), carrying on past failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tenants run at once, each on its own connection of the pool. Defaults
    /// to half the pool's size, between 1 and 4; never more than the pool's
    /// size.
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = Some(jobs.max(1));
        self
    }

    /// Stop starting tenants after the first failure; those not started are
    /// reported as [`RunOutcome::NotRun`] (tenants already running finish).
    /// Defaults to `false`: run every tenant and report.
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Only these tenants. A schema that is not registered fails the whole run
    /// with [`Error::TenantNotFound`] before any tenant runs; a suspended one
    /// runs only when suspended tenants are chosen too
    /// ([`include_suspended`](Self::include_suspended) or
    /// [`status`](Self::status)), and is otherwise reported as failed with
    /// [`Error::TenantSuspended`], as [`TenantPool::get`](crate::TenantPool::get)
    /// refuses it. Defaults to every tenant the status filter chooses.
    pub fn tenants(mut self, schemas: impl IntoIterator<Item = SchemaName>) -> Self {
        self.tenants = Some(schemas.into_iter().collect());
        self
    }

    /// Run suspended tenants too. Defaults to `false`: active tenants only.
    ///
    /// The pool scopes no connection to a suspended tenant, so a suspended
    /// tenant runs as migrations reach it: on a connection of the pool scoped
    /// to `public` whose transaction puts the tenant's schema at the head of
    /// the same search path a checkout sets (`"tenant", public, ...,
    /// pg_temp`), checked on the server (the schema must be the one the
    /// tenant was listed with), as the pool's login user (no per-tenant role).
    pub fn include_suspended(mut self, include: bool) -> Self {
        self.include_suspended = include;
        self
    }

    /// Only tenants with this status (with [`TenantStatus::Suspended`], the
    /// suspended tenants alone, run as
    /// [`include_suspended`](Self::include_suspended) describes). Defaults to
    /// none: active tenants, and suspended ones with `include_suspended`.
    pub fn status(mut self, status: TenantStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Called as tenants start and finish, from the threads (sync) or the task
    /// (async) running them: for progress bars and logs.
    pub fn on_progress(mut self, f: impl Fn(&ForEachProgress<'_>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    fn allows_suspended(&self) -> bool {
        self.include_suspended || self.status == Some(TenantStatus::Suspended)
    }

    fn chooses(&self, status: TenantStatus) -> bool {
        match self.status {
            Some(only) => status == only,
            None => status == TenantStatus::Active || self.include_suspended,
        }
    }

    /// The jobs for a pool of `max_size` connections.
    fn jobs_for(&self, max_size: usize) -> usize {
        let max_size = max_size.max(1);
        self.jobs
            .unwrap_or_else(|| (max_size / 2).clamp(1, 4))
            .min(max_size)
    }

    /// The tenants of a run, in schema order, from the registry's list.
    fn choose(&self, mut all: Vec<Tenant>) -> Result<Vec<Tenant>> {
        if let Some(list) = &self.tenants {
            if let Some(missing) = list.iter().find(|s| !all.iter().any(|t| t.schema() == *s)) {
                return Err(Error::TenantNotFound {
                    schema: missing.as_str().to_owned(),
                });
            }
            all.retain(|t| list.contains(t.schema()));
        } else {
            all.retain(|t| self.chooses(t.status()));
        }
        all.sort_by(|a, b| a.schema().cmp(b.schema()));
        Ok(all)
    }
}

/// A step of a `for_each_tenant` run, for [`ForEachOptions::on_progress`].
/// Tenants not run (after a failure, with `fail_fast`) send no event.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum ForEachProgress<'a> {
    /// A tenant's call is starting.
    Started {
        /// The tenant.
        tenant: &'a Tenant,
        /// Tenants started so far, this one included.
        started: usize,
        /// Tenants in the run.
        total: usize,
    },
    /// A tenant's call finished (its transaction committed or rolled back).
    Finished {
        /// The tenant.
        tenant: &'a Tenant,
        /// The error, if the tenant failed.
        error: Option<&'a dyn fmt::Display>,
        /// Time spent on the tenant.
        elapsed: Duration,
        /// Tenants finished so far, this one included.
        done: usize,
        /// Tenants in the run.
        total: usize,
    },
}

impl fmt::Debug for ForEachProgress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForEachProgress::Started {
                tenant,
                started,
                total,
            } => f
                .debug_struct("Started")
                .field("tenant", &tenant.schema())
                .field("started", started)
                .field("total", total)
                .finish(),
            ForEachProgress::Finished {
                tenant,
                error,
                elapsed,
                done,
                total,
            } => f
                .debug_struct("Finished")
                .field("tenant", &tenant.schema())
                .field("error", &error.map(|e| e.to_string()))
                .field("elapsed", elapsed)
                .field("done", done)
                .field("total", total)
                .finish(),
        }
    }
}

/// What happened in one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome<T, E> {
    /// The closure returned `Ok` and its transaction committed.
    Done(T),
    /// The closure returned this error (its transaction was rolled back), or
    /// the tenant could not be run: no connection, its schema missing or
    /// replaced, the commit failed, or the closure panicked
    /// ([`Error::TaskFailed`], converted into `E`).
    Failed(E),
    /// Not started: an earlier tenant failed and the run was `fail_fast`.
    NotRun,
}

impl<T, E> RunOutcome<T, E> {
    /// Whether the tenant failed.
    pub fn is_failure(&self) -> bool {
        matches!(self, RunOutcome::Failed(_))
    }

    /// The closure's value, if the tenant succeeded.
    pub fn value(&self) -> Option<&T> {
        match self {
            RunOutcome::Done(v) => Some(v),
            _ => None,
        }
    }

    /// The error, if the tenant failed.
    pub fn error(&self) -> Option<&E> {
        match self {
            RunOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// One tenant's line in a [`ForEachReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantRun<T, E> {
    /// The tenant, as the run listed it.
    pub tenant: Tenant,
    /// The closure's value, its error, or not run.
    pub outcome: RunOutcome<T, E>,
    /// Time spent on the tenant: checkout, closure and commit.
    pub elapsed: Duration,
}

/// Counts over a [`ForEachReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ForEachTotals {
    /// Tenants in the run.
    pub tenants: usize,
    /// Tenants whose closure succeeded and committed.
    pub done: usize,
    /// Tenants that failed.
    pub failed: usize,
    /// Tenants not started (`fail_fast`).
    pub not_run: usize,
}

/// The result of `for_each_tenant`: one entry per tenant, in schema order,
/// returned even when tenants failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForEachReport<T, E> {
    /// One entry per tenant, in schema-name order.
    pub tenants: Vec<TenantRun<T, E>>,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

impl<T, E> ForEachReport<T, E> {
    /// Counts by outcome.
    pub fn totals(&self) -> ForEachTotals {
        let mut t = ForEachTotals {
            tenants: self.tenants.len(),
            ..ForEachTotals::default()
        };
        for r in &self.tenants {
            match r.outcome {
                RunOutcome::Done(_) => t.done += 1,
                RunOutcome::Failed(_) => t.failed += 1,
                RunOutcome::NotRun => t.not_run += 1,
            }
        }
        t
    }

    /// Every tenant succeeded (none failed, none was left out).
    pub fn is_success(&self) -> bool {
        self.tenants
            .iter()
            .all(|r| matches!(r.outcome, RunOutcome::Done(_)))
    }

    /// The values of the tenants that succeeded, in schema order.
    pub fn values(&self) -> impl Iterator<Item = (&Tenant, &T)> {
        (self.tenants.iter()).filter_map(|r| r.outcome.value().map(|v| (&r.tenant, v)))
    }

    /// The errors of the tenants that failed, in schema order.
    pub fn failures(&self) -> impl Iterator<Item = (&Tenant, &E)> {
        (self.tenants.iter()).filter_map(|r| r.outcome.error().map(|e| (&r.tenant, e)))
    }

    /// The entry for one schema.
    pub fn tenant(&self, schema: &str) -> Option<&TenantRun<T, E>> {
        self.tenants
            .iter()
            .find(|r| r.tenant.schema().as_str() == schema)
    }

    /// Every tenant's value, in schema order, or the first failure's error
    /// (in schema order). A tenant not run is only ever left out after a
    /// failure; should one appear without, it is reported as
    /// [`Error::TaskFailed`].
    pub fn into_result(self) -> std::result::Result<Vec<(Tenant, T)>, E>
    where
        E: From<Error>,
    {
        let mut values = Vec::with_capacity(self.tenants.len());
        let mut not_run = None;
        for r in self.tenants {
            match r.outcome {
                RunOutcome::Done(v) => values.push((r.tenant, v)),
                RunOutcome::Failed(e) => return Err(e),
                RunOutcome::NotRun => {
                    not_run.get_or_insert(r.tenant);
                }
            }
        }
        match not_run {
            None => Ok(values),
            Some(t) => Err(Error::TaskFailed {
                task: format!("the run in tenant {:?}", t.schema().as_str()),
                reason: "it was not started".into(),
            }
            .into()),
        }
    }
}

/// The bookkeeping a run shares between its threads or futures: the counters
/// of the progress events, and the stop after a failure (`fail_fast`).
struct Tracker<'o> {
    options: &'o ForEachOptions,
    total: usize,
    started: AtomicUsize,
    finished: AtomicUsize,
    stop: AtomicBool,
}

impl<'o> Tracker<'o> {
    fn new(options: &'o ForEachOptions, total: usize) -> Self {
        Tracker {
            options,
            total,
            started: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn notify(&self, event: ForEachProgress<'_>) {
        if let Some(f) = &self.options.progress {
            f(&event);
        }
    }

    /// A tenant starts: its start time.
    fn start(&self, tenant: &Tenant) -> Instant {
        self.notify(ForEachProgress::Started {
            tenant,
            started: self.started.fetch_add(1, Ordering::Relaxed) + 1,
            total: self.total,
        });
        Instant::now()
    }

    /// A tenant ended with `result` (or panicked): its line of the report.
    fn finish<T, E>(
        &self,
        tenant: &Tenant,
        result: std::thread::Result<std::result::Result<T, E>>,
        started: Instant,
    ) -> TenantRun<T, E>
    where
        E: From<Error> + fmt::Display,
    {
        let outcome = match result {
            Ok(Ok(value)) => RunOutcome::Done(value),
            Ok(Err(error)) => RunOutcome::Failed(error),
            Err(panic) => RunOutcome::Failed(panicked(tenant, panic).into()),
        };
        if outcome.is_failure() && self.options.fail_fast {
            self.stop.store(true, Ordering::Relaxed);
        }
        let elapsed = started.elapsed();
        self.notify(ForEachProgress::Finished {
            tenant,
            error: outcome.error().map(|e| e as &dyn fmt::Display),
            elapsed,
            done: self.finished.fetch_add(1, Ordering::Relaxed) + 1,
            total: self.total,
        });
        TenantRun {
            tenant: tenant.clone(),
            outcome,
            elapsed,
        }
    }
}

fn not_run<T, E>(tenant: Tenant) -> TenantRun<T, E> {
    TenantRun {
        tenant,
        outcome: RunOutcome::NotRun,
        elapsed: Duration::ZERO,
    }
}

/// A panic in a tenant's call, as an error of that tenant.
fn panicked(tenant: &Tenant, panic: Box<dyn Any + Send>) -> Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    Error::TaskFailed {
        task: format!("the closure run in tenant {:?}", tenant.schema().as_str()),
        reason: format!("it panicked: {message}"),
    }
}

/// Refuses a suspended tenant unless the run chose suspended tenants.
fn check_status(tenant: &Tenant, allow_suspended: bool) -> Result<()> {
    if tenant.is_active() || allow_suspended {
        Ok(())
    } else {
        Err(Error::TenantSuspended {
            schema: tenant.schema().as_str().to_owned(),
        })
    }
}

/// Puts a suspended tenant's schema at the head of the search path, for the
/// current transaction only, in front of the path of the connection's
/// `public` scope: the same path a checkout for the tenant sets. The schema
/// name is a bind parameter, quoted by [`SchemaName::quoted`].
const SCOPE_SUSPENDED: &str = "SELECT pg_catalog.set_config('search_path', \
     $1 || ', ' || pg_catalog.current_setting('search_path'), true) AS path";

/// What the path reaches once set: the schema at its head and its object id.
const READ_HEAD: &str = "SELECT pg_catalog.current_schema()::text AS head, \
     (SELECT n.oid FROM pg_catalog.pg_namespace n \
      WHERE n.nspname = pg_catalog.current_schema()) AS head_oid";

#[derive(QueryableByName)]
struct Head {
    #[diesel(sql_type = Nullable<Text>)]
    head: Option<String>,
    #[diesel(sql_type = Nullable<Oid>)]
    head_oid: Option<u32>,
}

#[derive(QueryableByName)]
struct Path {
    #[diesel(sql_type = Nullable<Text>)]
    #[allow(dead_code)]
    path: Option<String>,
}

/// Refuses a path whose head is not the tenant's schema (it is gone) or is
/// another schema of the same name (a rename moved the name since the run
/// listed the tenant), as a checkout does.
fn check_head(tenant: &Tenant, head: Head) -> Result<()> {
    let schema = tenant.schema().as_str();
    if head.head.as_deref() != Some(schema) {
        return Err(Error::SchemaMissing {
            schema: schema.to_owned(),
        });
    }
    if let Some(expected) = tenant.schema_oid() {
        if head.head_oid != Some(expected) {
            return Err(Error::SchemaReplaced {
                schema: schema.to_owned(),
            });
        }
    }
    Ok(())
}

fn begin_error(tenant: &Tenant) -> impl FnOnce(diesel::result::Error) -> Error {
    Error::db(format!(
        "begin the transaction in tenant {:?}",
        tenant.schema().as_str()
    ))
}

fn commit_error(tenant: &Tenant) -> impl FnOnce(diesel::result::Error) -> Error {
    Error::db(format!(
        "commit the transaction in tenant {:?}",
        tenant.schema().as_str()
    ))
}

fn scope_error(tenant: &Tenant) -> impl FnOnce(diesel::result::Error) -> Error {
    Error::db(format!(
        "put suspended tenant {:?} on the search path",
        tenant.schema().as_str()
    ))
}

#[cfg(feature = "sync")]
mod sync;

#[cfg(any(feature = "deadpool", feature = "bb8"))]
mod asynchronous;

/// The start of the current transaction: a call that ends the transaction the
/// run gave it (and perhaps begins another) changes it.
const TRANSACTION_STARTED: &str = "SELECT pg_catalog.now()::text AS started";

#[derive(QueryableByName, PartialEq, Eq)]
struct Started {
    #[diesel(sql_type = Text)]
    started: String,
}

/// The error for a call that ended its transaction itself.
fn ended_by_call(tenant: &Tenant) -> Error {
    Error::TransactionEndedByCall {
        schema: tenant.schema().as_str().to_owned(),
    }
}
