//! The settings both pools are built from: one type, one set of defaults, one
//! check. [`TenantPoolBuilder`](crate::TenantPoolBuilder) and
//! [`AsyncTenantPoolBuilder`](crate::AsyncTenantPoolBuilder) each wrap it and
//! only add their own methods' documentation.

use std::time::Duration;

use crate::scope::{DEFAULT_RECYCLE_AFTER_SCHEMAS, ScopeConfig};
use crate::{Error, Result, SchemaName};

/// The default cap on a pooled connection's backend memory.
pub(crate) const DEFAULT_RECYCLE_ABOVE_MEMORY_MB: u64 = 64;

/// A pool's settings, with the defaults documented on the builders' methods.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub(crate) database_url: String,
    pub(crate) max_size: usize,
    pub(crate) min_idle: Option<usize>,
    pub(crate) connection_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) test_on_check_out: bool,
    pub(crate) extra_schemas: Vec<SchemaName>,
    pub(crate) track_search_path: bool,
    pub(crate) transaction_scoped: bool,
    pub(crate) statement_cache: Option<bool>,
    pub(crate) recycle_after_schemas: Option<u64>,
    pub(crate) recycle_above_memory_mb: Option<u64>,
    pub(crate) tenant_roles: bool,
    pub(crate) reset_after_every_borrow: bool,
    pub(crate) session_setup: Option<String>,
}

impl PoolSettings {
    /// The defaults, for a pool on `database_url`.
    pub(crate) fn new(database_url: String) -> Self {
        PoolSettings {
            database_url,
            max_size: 10,
            min_idle: None,
            connection_timeout: Duration::from_secs(30),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            test_on_check_out: true,
            extra_schemas: Vec::new(),
            track_search_path: true,
            transaction_scoped: false,
            statement_cache: None,
            recycle_after_schemas: Some(DEFAULT_RECYCLE_AFTER_SCHEMAS),
            recycle_above_memory_mb: Some(DEFAULT_RECYCLE_ABOVE_MEMORY_MB),
            tenant_roles: false,
            reset_after_every_borrow: false,
            session_setup: None,
        }
    }

    /// Refuses settings no pool can run with, as [`Error::Config`], before
    /// anything is opened (r2d2 would panic on some of them).
    pub(crate) fn check(&self) -> Result<()> {
        let invalid = |reason: &str| {
            Err(Error::Config {
                reason: reason.into(),
            })
        };
        if self.max_size == 0 {
            return invalid("max_size must be at least 1");
        }
        if self.min_idle.is_some_and(|n| n > self.max_size) {
            return invalid("min_idle must not exceed max_size");
        }
        if self.connection_timeout.is_zero() {
            return invalid("connection_timeout must be more than zero");
        }
        if self.max_lifetime.is_some_and(|d| d.is_zero())
            || self.idle_timeout.is_some_and(|d| d.is_zero())
        {
            return invalid("max_lifetime and idle_timeout must be more than zero (or None)");
        }
        if self.extra_schemas.iter().any(|s| s.as_str() == "public") {
            return invalid("public is always on the path");
        }
        crate::conn::check_database_url(&self.database_url)
    }

    /// Whether Diesel's prepared-statement cache is on: as set, or on except
    /// in transaction-scoped mode.
    pub(crate) fn statement_cache(&self) -> bool {
        self.statement_cache.unwrap_or(!self.transaction_scoped)
    }

    /// The scope settings every checkout of the pool runs with.
    pub(crate) fn scope_config(&self) -> ScopeConfig {
        ScopeConfig::new(
            self.extra_schemas.clone(),
            self.track_search_path,
            self.test_on_check_out,
            self.transaction_scoped,
            self.recycle_after_schemas,
            self.recycle_above_memory_mb
                .map(|mb| mb.saturating_mul(1024 * 1024)),
            self.tenant_roles,
            self.reset_after_every_borrow,
            self.session_setup.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_no_pool_can_run_with_are_refused() {
        let b = || PoolSettings::new("postgres://localhost/app".into());
        let reason = |s: PoolSettings| match s.check() {
            Err(Error::Config { reason }) => reason,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        assert!(b().check().is_ok());
        assert!(reason(PoolSettings { max_size: 0, ..b() }).contains("max_size"));
        let too_many_idle = PoolSettings {
            max_size: 2,
            min_idle: Some(3),
            ..b()
        };
        assert!(reason(too_many_idle).contains("min_idle"));
        let zero = PoolSettings {
            connection_timeout: Duration::ZERO,
            ..b()
        };
        assert!(reason(zero).contains("timeout"));
        let idle = PoolSettings {
            idle_timeout: Some(Duration::ZERO),
            ..b()
        };
        assert!(reason(idle).contains("idle_timeout"));
    }
}
