use super::*;
use std::panic::{AssertUnwindSafe, catch_unwind};

use diesel::PgConnection;
use diesel::RunQueryDsl;
use diesel::connection::{AnsiTransactionManager, TransactionManager};

use crate::conn::Sessions;
use crate::{TenantConnection, TenantPool, parallel, registry};

impl TenantPool {
    /// Runs `f` in every active tenant (or the tenants
    /// [`ForEachOptions`] chooses), `jobs` tenants at a time on threads of
    /// their own, and reports per tenant.
    ///
    /// Each call gets its own connection of this pool, scoped to the
    /// tenant exactly as [`with_tenant`](Self::with_tenant) scopes it (the
    /// tenant's schema, then `public`; its role with per-tenant roles), so
    /// `f` sees only its tenant's tables, whatever the other calls do at
    /// the same time. Each call runs in its own transaction, committed
    /// when `f` returns `Ok` and rolled back otherwise: a failing tenant
    /// keeps nothing of its call, and the others are not affected. A
    /// panic in `f` is that tenant's failure ([`Error::TaskFailed`]); the
    /// connection it used is closed, and the other tenants run on.
    ///
    /// The report lists every tenant in schema order with `f`'s value or
    /// error (or [`RunOutcome::NotRun`] after a failure with
    /// `fail_fast`) and the time spent. The run fails as a whole only
    /// when it cannot start: no connection, an unreadable registry, or a
    /// chosen schema that is not registered.
    ///
    /// Aggregating over tenants: each call returns its tenant's part, the
    /// caller merges them.
    ///
    /// ```no_run
    /// use diesel::prelude::*;
    /// use diesel_tenancy::{ForEachOptions, TenantPool};
    ///
    /// diesel::table! {
    ///     customers (id) {
    ///         id -> BigInt,
    ///         name -> Text,
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = TenantPool::builder("postgres://localhost/app").max_size(8).build()?;
    /// let report = pool.for_each_tenant(&ForEachOptions::new().jobs(4), |_tenant, conn| {
    ///     customers::table.count().get_result::<i64>(conn)
    /// })?;
    /// for (tenant, error) in report.failures() {
    ///     eprintln!("{}: {error}", tenant.schema());
    /// }
    /// let customers: i64 = report.values().map(|(_, n)| n).sum();
    /// println!("{customers} customers in {} tenants", report.totals().done);
    /// # Ok(()) }
    /// ```
    pub fn for_each_tenant<T, E, F>(
        &self,
        options: &ForEachOptions,
        f: F,
    ) -> Result<ForEachReport<T, E>>
    where
        F: Fn(&Tenant, &mut PgConnection) -> std::result::Result<T, E> + Sync,
        T: Send,
        E: From<Error> + fmt::Display + Send,
    {
        let started = Instant::now();
        let tenants = options.choose(registry::list_tenants(&mut self.public()?)?)?;
        let tracker = Tracker::new(options, tenants.len());
        let allow_suspended = options.allows_suspended();
        let (tenants, _) = parallel::run(
            self,
            &tenants,
            options.jobs_for(Sessions::max_size(self)),
            parallel::RECYCLE_AFTER_SCHEMAS,
            || (),
            |_state, _worker, tenant| {
                if tracker.stopped() {
                    return not_run(tenant.clone());
                }
                let t0 = tracker.start(tenant);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    run_one(self, tenant, allow_suspended, &f)
                }));
                tracker.finish(tenant, result, t0)
            },
            // Never reached: every call's panic is caught above.
            |tenant| TenantRun {
                tenant: tenant.clone(),
                outcome: RunOutcome::Failed(
                    panicked(tenant, Box::new("its worker thread panicked")).into(),
                ),
                elapsed: Duration::ZERO,
            },
        );
        Ok(ForEachReport {
            tenants,
            elapsed: started.elapsed(),
        })
    }
}

/// One tenant's call: the checkout, the transaction, `f`, the commit.
fn run_one<T, E, F>(
    pool: &TenantPool,
    tenant: &Tenant,
    allow_suspended: bool,
    f: &F,
) -> std::result::Result<T, E>
where
    F: Fn(&Tenant, &mut PgConnection) -> std::result::Result<T, E>,
    E: From<Error>,
{
    check_status(tenant, allow_suspended)?;
    let mut conn: TenantConnection = if tenant.is_active() {
        pool.get(tenant)?
    } else {
        pool.public()?
    };
    // In transaction-scoped mode the checkout's own transaction is the
    // call's; otherwise the call gets one.
    let began = match AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
        .transaction_depth()
        .map_err(begin_error(tenant))?
    {
        Some(_) => false,
        None => {
            AnsiTransactionManager::begin_transaction(&mut *conn).map_err(begin_error(tenant))?;
            true
        }
    };
    let started = |conn: &mut TenantConnection| {
        diesel::sql_query(TRANSACTION_STARTED)
            .get_result::<Started>(&mut **conn)
            .map_err(scope_error(tenant))
    };
    let before = scope(&mut conn, tenant).and_then(|()| started(&mut conn));
    let result = before.map_err(E::from).and_then(|before| {
        let result = f(tenant, &mut conn);
        let depth = AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
            .transaction_depth()
            .ok()
            .flatten();
        // A query that fails here means an aborted transaction (the call's
        // own statement failed), which is still the run's to roll back.
        if depth.is_none() || started(&mut conn).is_ok_and(|now| now != before) {
            // What it did before may be committed: say so, and roll back
            // whatever transaction it left open.
            if depth.is_some() && AnsiTransactionManager::rollback_transaction(&mut *conn).is_err()
            {
                conn.discard();
            }
            conn.discard();
            return Err(E::from(ended_by_call(tenant)));
        }
        result
    });
    match result {
        Ok(value) => {
            if began {
                AnsiTransactionManager::commit_transaction(&mut *conn)
                    .map_err(commit_error(tenant))?;
            }
            conn.commit()?;
            Ok(value)
        }
        Err(error) => {
            if began && AnsiTransactionManager::rollback_transaction(&mut *conn).is_err() {
                conn.discard();
            }
            Err(error)
        }
    }
}

/// Nothing for an active tenant (the checkout scoped the connection); for
/// a suspended one, its schema at the head of the path for the
/// transaction, checked.
fn scope(conn: &mut PgConnection, tenant: &Tenant) -> Result<()> {
    if tenant.is_active() {
        return Ok(());
    }
    diesel::sql_query(SCOPE_SUSPENDED)
        .bind::<Text, _>(tenant.schema().quoted())
        .get_result::<Path>(conn)
        .map_err(scope_error(tenant))?;
    let head = diesel::sql_query(READ_HEAD)
        .get_result::<Head>(conn)
        .map_err(scope_error(tenant))?;
    check_head(tenant, head)
}
