//! The checkout (driving the scope state machine) and the release decision,
//! cancellation and leftover notifications.

use super::*;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, TransactionManager,
};

use crate::scope::{
    BackendMemory, ConnState, CurrentState, Release, ScopeConfig, ScopeKey, ServerState, SetPath,
    Step, TempObjects,
};
use crate::{Error, Result, scope};

#[inline]
pub(super) fn state(conn: &mut AsyncPgConnection) -> Option<&mut ConnState> {
    scope::watch_of(conn.instrumentation()).map(|w| &mut w.state)
}

pub(super) fn mark_own(conn: &mut AsyncPgConnection) {
    if let Some(w) = scope::watch_of(conn.instrumentation()) {
        w.own_statement_next();
    }
}

impl AsyncTenantPool {
    pub(super) async fn checkout(&self, scope: &ScopeKey, local: bool) -> Result<Pooled> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.get().await?;
            // A checkout cancelled mid-statement returns its connection to
            // the pool without a guard: a query may be in flight, or the
            // checkout's own transaction open.
            let unsettled = !matches!(
                AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
                    .transaction_depth(),
                Ok(None)
            );
            if unsettled || state(&mut conn).is_none_or(|s| s.discard || s.in_flight > 0) {
                conn.discard();
                continue;
            }
            match enter(&self.settings.scope, &mut conn, scope, local).await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    let discard = state(&mut conn).is_none_or(|s| s.discard);
                    if discard {
                        conn.discard();
                        // A dead connection (say, after a server restart) is
                        // replaced and the checkout tried again.
                        if matches!(e, Error::Scope { .. }) && attempt < 3 {
                            continue;
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Drives the scope state machine (the same one as the sync pool) until the
/// connection holds `scope`: in the common case one statement, or none.
// One loop on purpose: it is the async side of the shared state machine
// (`ConnState::plan`), step by step as the sync pool's `enter` runs it.
pub(super) async fn enter(
    cfg: &ScopeConfig,
    conn: &mut AsyncPgConnection,
    scope: &ScopeKey,
    local: bool,
) -> Result<()> {
    use diesel_async::RunQueryDsl;
    match scope::watch_of(conn.instrumentation()) {
        Some(w) => {
            w.clear_own_statement();
            w.state.begin_checkout(cfg);
        }
        None => return Err(scope.instrumentation_lost()),
    }
    for _ in 0..scope::MAX_STEPS {
        let step = state(conn)
            .ok_or_else(|| scope.instrumentation_lost())?
            .plan(cfg, scope, local);
        match step {
            Step::Ready => return Ok(()),
            Step::Reset => {
                Box::pin(end_own_transaction(conn)).await;
                let ok = Box::pin(reset(cfg, conn)).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle_reset(cfg, ok);
                if !ok {
                    return Err(scope.reset_failed());
                }
            }
            Step::ProbeTemp => {
                mark_own(conn);
                let answer = Box::pin(RunQueryDsl::get_result::<bool>(TempObjects, conn)).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle_probe(scope, answer)?;
            }
            Step::SampleMemory => {
                mark_own(conn);
                let answer = RunQueryDsl::get_result::<i64>(BackendMemory, conn).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle_memory(cfg, answer);
            }
            Step::ReadBack => {
                mark_own(conn);
                let answer = RunQueryDsl::get_result::<ServerState>(CurrentState, conn).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle(cfg, scope, None, answer)?;
            }
            Step::Set { path, role, local } => {
                if local {
                    if let Err(source) =
                        Box::pin(AnsiTransactionManager::begin_transaction(conn)).await
                    {
                        if let Some(s) = state(conn) {
                            s.discard = true;
                        }
                        return Err(Error::Scope {
                            scope: scope.head().to_owned(),
                            source,
                        });
                    }
                }
                mark_own(conn);
                // Boxed, as are the other rare steps: the checkout's future
                // stays small for the common one (a read-back).
                let answer = Box::pin(set_path(conn, path.clone(), role, local)).await;
                let settled = state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle(cfg, scope, Some(&path), answer);
                if local && settled.is_err() {
                    Box::pin(end_own_transaction(conn)).await;
                }
                settled?;
            }
        }
    }
    Box::pin(end_own_transaction(conn)).await;
    if let Some(s) = state(conn) {
        s.discard = true;
    }
    Err(scope.unsettled())
}

/// Sends [`SetPath`] in the variant the scope needs.
pub(super) async fn set_path(
    conn: &mut AsyncPgConnection,
    path: String,
    role: Option<String>,
    local: bool,
) -> diesel::QueryResult<ServerState> {
    use diesel_async::RunQueryDsl;
    match (role, local) {
        (None, false) => {
            RunQueryDsl::get_result(
                SetPath::<false, false> {
                    path,
                    role: String::new(),
                },
                conn,
            )
            .await
        }
        (None, true) => {
            RunQueryDsl::get_result(
                SetPath::<false, true> {
                    path,
                    role: String::new(),
                },
                conn,
            )
            .await
        }
        (Some(role), false) => {
            RunQueryDsl::get_result(SetPath::<true, false> { path, role }, conn).await
        }
        (Some(role), true) => {
            RunQueryDsl::get_result(SetPath::<true, true> { path, role }, conn).await
        }
    }
}

/// Asks the server to cancel the statement the connection is running (a
/// cancel request on a new socket, from a task on the current runtime).
pub(super) fn cancel_running_query(conn: &AsyncPgConnection) {
    let token = conn.cancel_token();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = token.cancel_query(tokio_postgres::NoTls).await;
        });
    }
}

/// Runs the reset batch (one round trip), then drops the notifications
/// already received; whether the batch succeeded.
pub(super) async fn reset(cfg: &ScopeConfig, conn: &mut AsyncPgConnection) -> bool {
    use diesel_async::SimpleAsyncConnection;
    mark_own(conn);
    let ok = conn.batch_execute(cfg.reset_sql()).await.is_ok();
    drain_notifications(conn);
    ok
}

/// Drops the notifications already received (before the reset's `UNLISTEN`),
/// without waiting for more: the next borrower must not receive them.
pub(super) fn drain_notifications(conn: &mut AsyncPgConnection) {
    use futures_util::{FutureExt, StreamExt};
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(Some(_)) = stream.next().now_or_never() {}
}

/// Rolls back a transaction Diesel knows to be open (the checkout's own, in
/// transaction-scoped mode); marks the connection for discarding if that fails.
pub(super) async fn end_own_transaction(conn: &mut AsyncPgConnection) {
    let ok = match AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth()
    {
        Ok(None) => true,
        Ok(Some(_)) => AnsiTransactionManager::rollback_transaction(conn)
            .await
            .is_ok(),
        Err(_) => false,
    };
    if !ok {
        if let Some(s) = state(conn) {
            s.discard = true;
        }
    }
}

/// Ends a borrow: decides keep, reset or discard with the shared state
/// machine, and runs the reset. Returns whether the connection may go back
/// to the pool.
pub(super) async fn release(
    cfg: &ScopeConfig,
    conn: &mut AsyncPgConnection,
    own_transaction: bool,
    decided: Option<Release>,
) -> bool {
    if own_transaction {
        let depth =
            AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth();
        let rolled_back = matches!(depth, Ok(Some(d)) if d.get() == 1)
            && AnsiTransactionManager::rollback_transaction(conn)
                .await
                .is_ok();
        if !rolled_back && !matches!(depth, Ok(None)) {
            return false;
        }
    }
    let decision = match decided {
        Some(decision) => decision,
        None => release_decision(cfg, conn, false),
    };
    match decision {
        Release::Keep => true,
        Release::Discard => false,
        Release::Reset => {
            let ok = reset(cfg, conn).await;
            match state(conn) {
                Some(s) => {
                    s.settle_reset(cfg, ok);
                    ok
                }
                None => false,
            }
        }
    }
}

/// The state machine's decision for a borrow that has ended.
pub(super) fn release_decision(
    cfg: &ScopeConfig,
    conn: &mut AsyncPgConnection,
    panicking: bool,
) -> Release {
    let in_transaction = AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .ok()
        .map(|depth| depth.is_some());
    match scope::watch_of(conn.instrumentation()) {
        Some(w) => {
            w.clear_own_statement();
            w.state.release(cfg, in_transaction, panicking)
        }
        None => Release::Discard,
    }
}
