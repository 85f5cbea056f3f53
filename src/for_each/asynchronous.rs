use super::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::conn::Sessions;
use crate::{AsyncTenantConnection, AsyncTenantPool, registry};

pub(crate) mod private {
    use super::*;

    /// Names the future an async closure returns for one tenant, so that
    /// bounds can require it to be `Send` (as
    /// [`AsyncTenantPool::with_tenant`] does).
    #[allow(unreachable_pub)]
    pub trait TenantFn<'r, T, E>:
        AsyncFnOnce(&'r Tenant, &'r mut AsyncPgConnection) -> std::result::Result<T, E>
        + FnOnce(&'r Tenant, &'r mut AsyncPgConnection) -> <Self as TenantFn<'r, T, E>>::Fut
    {
        /// The future of one call.
        type Fut: Future<Output = std::result::Result<T, E>>;
    }

    impl<'r, F, Fut, T, E> TenantFn<'r, T, E> for F
    where
        F: AsyncFnOnce(&'r Tenant, &'r mut AsyncPgConnection) -> std::result::Result<T, E>
            + FnOnce(&'r Tenant, &'r mut AsyncPgConnection) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        type Fut = Fut;
    }
}

use private::TenantFn;

impl AsyncTenantPool {
    /// Runs the async closure `f` in every active tenant (or the tenants
    /// [`ForEachOptions`] chooses), at most `jobs` tenants at once, and
    /// reports per tenant: [`TenantPool::for_each_tenant`](crate::TenantPool::for_each_tenant)
    /// for async code.
    ///
    /// The calls run concurrently on the calling task (no task is
    /// spawned, so `f` may borrow from the caller), each on its own
    /// connection of this pool scoped to its tenant as
    /// [`with_tenant`](Self::with_tenant) scopes it, with the tenant as
    /// the task's [`current_tenant`](crate::current_tenant) while it
    /// runs, and in its own transaction (committed when `f` returns `Ok`,
    /// rolled back otherwise). A panic in `f` is that tenant's failure
    /// ([`Error::TaskFailed`]); the others run on. `f` is cloned for each
    /// tenant, so it may capture references but not values it cannot
    /// clone. Dropping the returned future cancels the calls in flight as
    /// dropping a [`with_tenant`](Self::with_tenant) future does.
    ///
    /// Blocking work in a tenant (the crate's registry or migration
    /// functions) belongs in [`blocking`](Self::blocking), not here.
    ///
    /// ```no_run
    /// # async fn run(pool: diesel_tenancy::AsyncTenantPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel::prelude::*;
    /// use diesel_async::RunQueryDsl;
    /// use diesel_tenancy::ForEachOptions;
    ///
    /// diesel::table! {
    ///     customers (id) {
    ///         id -> BigInt,
    ///         name -> Text,
    ///     }
    /// }
    ///
    /// let report = pool
    ///     .for_each_tenant(&ForEachOptions::new().jobs(4), async |_tenant, conn| {
    ///         customers::table.count().get_result::<i64>(conn).await
    ///     })
    ///     .await?;
    /// let customers: i64 = report.values().map(|(_, n)| n).sum();
    /// # Ok(()) }
    /// ```
    ///
    /// The tenant list is read with the crate's blocking registry code on
    /// tokio's blocking threads (as [`blocking`](Self::blocking) does).
    pub async fn for_each_tenant<T, E, F>(
        &self,
        options: &ForEachOptions,
        f: F,
    ) -> Result<ForEachReport<T, E>>
    where
        for<'r> F: AsyncFnOnce(&'r Tenant, &'r mut AsyncPgConnection) -> std::result::Result<T, E>
            + TenantFn<'r, T, E, Fut: Send>
            + Clone
            + Send,
        T: Send,
        E: From<Error> + fmt::Display + Send,
    {
        let started = Instant::now();
        let all = self.blocking(registry::list_tenants).await??;
        let tenants = options.choose(all)?;
        let max_size = tokio::runtime::Handle::try_current()
            .map(|h| self.sessions(h).max_size())
            .unwrap_or(usize::MAX);
        let jobs = options.jobs_for(max_size);
        let tracker = Tracker::new(options, tenants.len());
        let allow_suspended = options.allows_suspended();
        let mut slots: Vec<Option<TenantRun<T, E>>> = tenants.iter().map(|_| None).collect();
        let mut running = FuturesUnordered::new();
        let mut next = 0;
        loop {
            while running.len() < jobs && next < tenants.len() && !tracker.stopped() {
                let (i, tenant) = (next, &tenants[next]);
                next += 1;
                let t0 = tracker.start(tenant);
                let call = CatchUnwind(Some(Box::pin(run_one(
                    self,
                    tenant.clone(),
                    allow_suspended,
                    f.clone(),
                ))));
                running.push(async move { (i, t0, call.await) });
            }
            let Some((i, t0, result)) = running.next().await else {
                break;
            };
            slots[i] = Some(tracker.finish(&tenants[i], result, t0));
        }
        let tenants = tenants
            .into_iter()
            .zip(slots)
            .map(|(tenant, run)| run.unwrap_or_else(|| not_run(tenant)))
            .collect();
        Ok(ForEachReport {
            tenants,
            elapsed: started.elapsed(),
        })
    }
}

/// One tenant's call: the checkout, the transaction, `f`, the commit.
async fn run_one<T, E, F>(
    pool: &AsyncTenantPool,
    tenant: Tenant,
    allow_suspended: bool,
    f: F,
) -> std::result::Result<T, E>
where
    for<'r> F: TenantFn<'r, T, E, Fut: Send>,
    E: From<Error>,
{
    check_status(&tenant, allow_suspended)?;
    let mut conn: AsyncTenantConnection = if tenant.is_active() {
        pool.get(&tenant).await?
    } else {
        pool.public().await?
    };
    let began = match AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
        .transaction_depth()
        .map_err(begin_error(&tenant))?
    {
        Some(_) => false,
        None => {
            AnsiTransactionManager::begin_transaction(&mut *conn)
                .await
                .map_err(begin_error(&tenant))?;
            true
        }
    };
    let before = match scope(&mut conn, &tenant).await {
        Ok(()) => started(&mut conn, &tenant).await,
        Err(e) => Err(e),
    };
    let result = match before {
        Ok(before) => {
            let work: <F as TenantFn<'_, T, E>>::Fut = f(&tenant, &mut conn);
            let result = crate::task_local::with_current_tenant(tenant.clone(), work).await;
            let depth = AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
                .transaction_depth()
                .ok()
                .flatten();
            // A query that fails here means an aborted transaction (the
            // call's own statement failed), which is still the run's to roll
            // back.
            let restarted = match depth {
                Some(_) => started(&mut conn, &tenant)
                    .await
                    .is_ok_and(|now| now != before),
                None => true,
            };
            if restarted {
                // What it did before may be committed: say so; the open
                // transaction it may have left is rolled back below.
                if depth.is_some() {
                    let _ = AnsiTransactionManager::rollback_transaction(&mut *conn).await;
                }
                return Err(E::from(ended_by_call(&tenant)));
            }
            result
        }
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(value) => {
            if began {
                AnsiTransactionManager::commit_transaction(&mut *conn)
                    .await
                    .map_err(commit_error(&tenant))?;
            }
            conn.commit().await?;
            Ok(value)
        }
        Err(error) => {
            if began {
                // A failed rollback leaves the transaction open, and the
                // pool closes such a connection.
                let _ = AnsiTransactionManager::rollback_transaction(&mut *conn).await;
            }
            Err(error)
        }
    }
}

/// The sync `scope`'s async twin: the path of a suspended tenant.
async fn scope(conn: &mut AsyncPgConnection, tenant: &Tenant) -> Result<()> {
    if tenant.is_active() {
        return Ok(());
    }
    diesel::sql_query(SCOPE_SUSPENDED)
        .bind::<Text, _>(tenant.schema().quoted())
        .get_result::<Path>(conn)
        .await
        .map_err(scope_error(tenant))?;
    let head = diesel::sql_query(READ_HEAD)
        .get_result::<Head>(conn)
        .await
        .map_err(scope_error(tenant))?;
    check_head(tenant, head)
}

/// A future whose panic is its output instead of the poller's: one
/// tenant's panic ends that tenant's call only. The panicked future (and
/// the connection it holds, left in a transaction, which the pool then
/// closes) is dropped at once.
struct CatchUnwind<F>(Option<Pin<Box<F>>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.0.as_mut() else {
            return Poll::Ready(Err(Box::new("polled after it completed")));
        };
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                self.0 = None;
                Poll::Ready(Ok(output))
            }
            Err(panic) => {
                self.0 = None;
                Poll::Ready(Err(panic))
            }
        }
    }
}

/// The start of the connection's current transaction.
async fn started(conn: &mut AsyncPgConnection, tenant: &Tenant) -> Result<Started> {
    diesel_async::RunQueryDsl::get_result::<Started>(diesel::sql_query(TRANSACTION_STARTED), conn)
        .await
        .map_err(scope_error(tenant))
}
