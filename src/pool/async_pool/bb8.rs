//! [`AsyncTenantPool`](crate::AsyncTenantPool) on diesel-async's bb8 pool:
//! building it, checking a connection out, closing one.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::bb8::{ErrorSink, RunError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, PoolError};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use super::Limits;
use crate::{Error, Result};

type Manager = AsyncDieselConnectionManager<AsyncPgConnection>;
type Inner = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;

/// A checked-out connection (owning a handle on the pool).
pub(super) type Conn = ::bb8::PooledConnection<'static, Manager>;

/// diesel-async's bb8 pool, and the last error bb8 met opening a connection
/// (bb8 retries until the checkout times out, and reports only the timeout).
#[derive(Clone)]
pub(super) struct Pool {
    inner: Inner,
    limits: Limits,
    last_error: LastError,
}

/// A connection error bb8 met, and when.
type Seen = (Instant, Arc<PoolError>);

/// The error sink bb8 reports connection errors to: keeps the last one.
#[derive(Debug, Clone, Default)]
struct LastError(Arc<Mutex<Option<Seen>>>);

impl ErrorSink<PoolError> for LastError {
    fn sink(&self, error: PoolError) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((Instant::now(), Arc::new(error)));
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<PoolError>> {
        Box::new(self.clone())
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Pool {
    pub(super) fn build(manager: Manager, limits: Limits) -> Result<Pool> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config {
                reason: "the bb8 pool must be built inside a tokio runtime (bb8 starts its \
                         reaper and its idle connections there)"
                    .into(),
            });
        }
        let last_error = LastError::default();
        let mut builder = ::bb8::Pool::builder()
            .max_size(count(limits.max_size))
            .min_idle(limits.min_idle.map(count))
            .max_lifetime(limits.max_lifetime)
            .idle_timeout(limits.idle_timeout)
            .connection_timeout(limits.connection_timeout)
            // The checkout's own statement is the liveness check.
            .test_on_check_out(false)
            .error_sink(Box::new(last_error.clone()));
        if let Some(rate) = limits.reaper_rate() {
            builder = builder.reaper_rate(rate);
        }
        Ok(Pool {
            inner: builder.build_unchecked(manager),
            limits,
            last_error,
        })
    }

    pub(super) async fn get(&self) -> Result<Conn> {
        self.inner.get_owned().await.map_err(|e| match e {
            RunError::TimedOut => {
                // The last connection error, if bb8 met one while this
                // checkout waited.
                let source = self.last_error.0.lock().ok().and_then(|mut last| {
                    last.take()
                        .filter(|(at, _)| at.elapsed() <= self.limits.connection_timeout)
                        .map(|(_, e)| Box::new(e) as crate::BoxError)
                });
                Error::AsyncPool {
                    pool: "bb8",
                    timed_out: true,
                    reason: match source {
                        Some(_) => format!(
                            "could not open a connection within {:?}",
                            self.limits.connection_timeout
                        ),
                        None => format!(
                            "no connection came free within {:?}",
                            self.limits.connection_timeout
                        ),
                    },
                    source,
                }
            }
            RunError::User(e) => Error::AsyncPool {
                pool: "bb8",
                timed_out: false,
                reason: "could not open a connection".to_owned(),
                source: Some(Box::new(e)),
            },
        })
    }

    pub(super) fn max_size(&self) -> usize {
        self.limits.max_size
    }

    pub(super) fn status(&self) -> (usize, usize) {
        let state = self.inner.state();
        (state.connections as usize, state.idle_connections as usize)
    }
}

/// Closes the connection instead of giving it back: bb8 closes a connection
/// its manager reports broken when it comes back, and diesel-async's manager
/// reports a connection broken when its transaction manager is in error.
pub(super) fn discard(mut conn: Conn) {
    AnsiTransactionManager::transaction_manager_status_mut(&mut *conn).set_in_error();
    drop(conn);
}
