//! [`AsyncTenantPool`](crate::AsyncTenantPool) on diesel-async's deadpool pool:
//! building it, checking a connection out, closing one.

use std::sync::{Arc, Once};

use std::time::{Duration, Instant};

use ::deadpool::managed::{Hook, HookError, Metrics, PoolError, TimeoutType, Timeouts};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Object;

use super::Limits;
use crate::{Error, Result};

type Inner = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

/// A checked-out connection.
pub(super) type Conn = Object<AsyncPgConnection>;

/// diesel-async's deadpool pool, and the task that closes idle connections
/// past `max_lifetime` or `idle_timeout` (deadpool has none of its own).
#[derive(Clone)]
pub(super) struct Pool {
    inner: Inner,
    limits: Limits,
    reaper: Arc<Once>,
}

/// Whether a connection has outlived `max_lifetime` or sat idle past
/// `idle_timeout` (measured from its last checkout: what deadpool records).
fn expired(limits: &Limits, metrics: &Metrics) -> bool {
    let now = Instant::now();
    limits
        .max_lifetime
        .is_some_and(|max| now.saturating_duration_since(metrics.created) >= max)
        || limits.idle_timeout.is_some_and(|max| {
            now.saturating_duration_since(metrics.recycled.unwrap_or(metrics.created)) >= max
        })
}

impl Pool {
    pub(super) fn build(
        manager: AsyncDieselConnectionManager<AsyncPgConnection>,
        limits: Limits,
    ) -> Result<Pool> {
        let inner = Inner::builder(manager)
            .max_size(limits.max_size)
            .timeouts(timeouts(&limits, Some(limits.connection_timeout)))
            // A connection past its lifetime or idle time is closed instead of
            // handed out, and deadpool takes the next one.
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if expired(&limits, metrics) {
                    Err(HookError::message("expired"))
                } else {
                    Ok(())
                }
            }))
            .runtime(::deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config {
                reason: format!("could not build the deadpool pool: {e}"),
            })?;
        Ok(Pool {
            inner,
            limits,
            reaper: Arc::new(Once::new()),
        })
    }

    pub(super) async fn get(&self) -> Result<Conn> {
        self.reaper.call_once(|| self.start_reaper());
        // A free connection is taken without arming the wait's timer.
        let now = self
            .inner
            .timeout_get(&timeouts(&self.limits, Some(Duration::ZERO)))
            .await;
        let got = match now {
            Err(PoolError::Timeout(TimeoutType::Wait)) => self.inner.get().await,
            got => got,
        };
        got.map_err(|e| {
            let timed_out = matches!(e, PoolError::Timeout(_));
            let reason = match &e {
                PoolError::Timeout(TimeoutType::Wait) => format!(
                    "no connection came free within {:?}",
                    self.limits.connection_timeout
                ),
                PoolError::Timeout(TimeoutType::Create) => format!(
                    "opening a connection took longer than {:?}",
                    self.limits.connection_timeout
                ),
                PoolError::Timeout(TimeoutType::Recycle) => format!(
                    "checking a connection took longer than {:?}",
                    self.limits.connection_timeout
                ),
                PoolError::Backend(_) => "could not open a connection".to_owned(),
                PoolError::Closed => "the pool is closed".to_owned(),
                other => other.to_string(),
            };
            let source: Option<crate::BoxError> = match e {
                PoolError::Backend(e) => Some(Box::new(e)),
                _ => None,
            };
            Error::AsyncPool {
                pool: "deadpool",
                timed_out,
                reason,
                source,
            }
        })
    }

    /// Starts, on the current runtime, the task that closes idle connections
    /// past their lifetime or idle time; it ends with the pool.
    fn start_reaper(&self) {
        let (Some(rate), Ok(runtime)) = (
            self.limits.reaper_rate(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let (weak, limits) = (self.inner.weak(), self.limits);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(rate);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                pool.retain(|_, metrics| !expired(&limits, &metrics));
            }
        });
    }

    pub(super) fn max_size(&self) -> usize {
        self.inner.status().max_size
    }

    pub(super) fn status(&self) -> (usize, usize) {
        let status = self.inner.status();
        (status.size, status.available)
    }
}

/// The pool's timeouts, with `wait` for a free connection: opening one takes
/// at most the connection timeout; recycling sends nothing (the checkout's own
/// statement is the liveness check), so it has none.
fn timeouts(limits: &Limits, wait: Option<Duration>) -> Timeouts {
    let mut timeouts = Timeouts::new();
    timeouts.wait = wait;
    timeouts.create = Some(limits.connection_timeout);
    timeouts.recycle = None;
    timeouts
}

/// Closes the connection instead of giving it back.
pub(super) fn discard(conn: Conn) {
    drop(Object::take(conn));
}
