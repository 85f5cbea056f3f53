//! The task-local current tenant: set by the async pools' `with_tenant` (and
//! the axum layer), read anywhere below them, carried into spawned tasks.

use std::future::Future;

use crate::Tenant;

tokio::task_local! {
    static CURRENT_TENANT: Tenant;
}

/// The tenant the current task runs for, if it runs inside
/// `AsyncTenantPool::with_tenant`, [`with_current_tenant`] or a task started
/// by [`spawn_with_tenant`].
pub fn current_tenant() -> Option<Tenant> {
    CURRENT_TENANT.try_with(Tenant::clone).ok()
}

/// Runs `future` with `tenant` as the task's [`current_tenant`].
pub async fn with_current_tenant<F: Future>(tenant: Tenant, future: F) -> F::Output {
    CURRENT_TENANT.scope(tenant, future).await
}

/// Spawns a task that carries the current task's tenant along (or none).
pub fn spawn_with_tenant<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current_tenant() {
        Some(tenant) => tokio::spawn(CURRENT_TENANT.scope(tenant, future)),
        None => tokio::spawn(future),
    }
}
