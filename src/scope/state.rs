//! The one scope state machine both pools drive. A pool asks [`ConnState::plan`]
//! what to send next, sends it, and reports the answer with a `settle_*`
//! method, until the plan is [`Step::Ready`]; when the borrow ends it asks
//! [`ConnState::release`] whether to keep, reset or discard the connection.
//! Nothing here sends a statement, so the same decisions serve the sync pool
//! (r2d2, libpq) and the async one (diesel-async) exactly alike.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::ScopeKey;
use super::ScopeStats;
use super::sql::ServerState;
use crate::{Error, SchemaName};

/// The settings that decide how a connection is scoped, shared by a pool and
/// every connection it makes.
#[derive(Debug)]
pub(crate) struct ScopeConfig {
    pub(crate) extra_schemas: Vec<SchemaName>,
    /// Remember each connection's path and skip setting it again.
    pub(crate) track_search_path: bool,
    /// Check the session's state at checkout (in the statement that sets or
    /// reads the path).
    pub(crate) test_on_check_out: bool,
    /// Every scoped unit of work is a transaction that sets the path locally.
    pub(crate) transaction_scoped: bool,
    /// Replace a connection after it has been scoped to this many schemas.
    pub(crate) recycle_after_schemas: Option<u64>,
    /// Replace a connection whose backend memory passes this many bytes
    /// (sampled every [`MEMORY_SAMPLE_EVERY`]th checkout).
    pub(crate) recycle_above_bytes: Option<u64>,
    /// The backend's memory could not be read (no `pg_read_all_stats`): stop
    /// sampling; the schema count still applies.
    memory_unreadable: AtomicBool,
    /// Switch to the tenant's own role while scoped.
    pub(crate) tenant_roles: bool,
    /// Reset the session after every borrow, harmless or not.
    pub(crate) reset_after_every_borrow: bool,
    /// SQL run on every new connection and after every reset.
    #[cfg_attr(not(feature = "sync"), allow(dead_code))]
    pub(crate) session_setup: Option<String>,
    /// The reset batch, with `session_setup` at its end, built once.
    reset: String,
    scoped: AtomicU64,
    path_sets: AtomicU64,
    resets: AtomicU64,
    memory_samples: AtomicU64,
    memory_recycles: AtomicU64,
}

/// How often a connection's backend memory is sampled when the memory cap is
/// on: every this many checkouts of the connection, one statement more (and
/// sooner, after [`MEMORY_SAMPLE_NEW_SCHEMAS`] schemas new to it).
pub const MEMORY_SAMPLE_EVERY: u32 = 1024;

/// A connection's backend memory is also sampled once it has been scoped to
/// this many schemas new to it since the last sample: what makes a backend
/// grow is the catalog entries of schemas it had not touched, so a connection
/// that keeps serving the same tenants is hardly ever sampled, and one that
/// passes the cap goes past it by at most this many schemas' entries.
pub const MEMORY_SAMPLE_NEW_SCHEMAS: u32 = 8;

impl ScopeConfig {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        extra_schemas: Vec<SchemaName>,
        track_search_path: bool,
        test_on_check_out: bool,
        transaction_scoped: bool,
        recycle_after_schemas: Option<u64>,
        recycle_above_bytes: Option<u64>,
        tenant_roles: bool,
        reset_after_every_borrow: bool,
        session_setup: Option<String>,
    ) -> Self {
        ScopeConfig {
            extra_schemas,
            // A path set with SET LOCAL ends with its transaction.
            track_search_path: track_search_path && !transaction_scoped,
            test_on_check_out,
            transaction_scoped,
            recycle_after_schemas,
            recycle_above_bytes,
            memory_unreadable: AtomicBool::new(false),
            tenant_roles,
            reset_after_every_borrow,
            reset: super::reset_sql(session_setup.as_deref()),
            session_setup,
            scoped: AtomicU64::new(0),
            path_sets: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            memory_samples: AtomicU64::new(0),
            memory_recycles: AtomicU64::new(0),
        }
    }

    /// The statement that resets a session ([`reset_sql`](super::reset_sql)).
    pub(crate) fn reset_sql(&self) -> &str {
        &self.reset
    }

    /// Counters of the scoping done with these settings.
    pub(crate) fn stats(&self) -> ScopeStats {
        ScopeStats {
            scoped: self.scoped.load(Ordering::Relaxed),
            path_sets: self.path_sets.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            memory_samples: self.memory_samples.load(Ordering::Relaxed),
            memory_recycles: self.memory_recycles.load(Ordering::Relaxed),
            memory_unreadable: self.memory_unreadable.load(Ordering::Relaxed),
        }
    }

    /// The role a checkout for `tenant` switches to, or `None` when roles are
    /// off; a tenant without a role cannot be served when they are on.
    pub(crate) fn role_of(&self, tenant: &crate::Tenant) -> crate::Result<Option<SchemaName>> {
        if !self.tenant_roles {
            return Ok(None);
        }
        tenant
            .role()
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::TenantRoleMissing {
                schema: tenant.schema().as_str().to_owned(),
            })
    }

    /// Refuses a tenant whose schema is one of the pool's extra schemas: its
    /// path would name the schema twice, and every tenant would see it.
    pub(crate) fn check_tenant(&self, tenant: &crate::Tenant) -> crate::Result<()> {
        if !tenant.is_active() {
            return Err(Error::TenantSuspended {
                schema: tenant.schema().as_str().to_owned(),
            });
        }
        if self.extra_schemas.contains(tenant.schema()) {
            return Err(Error::SchemaOnEveryPath {
                schema: tenant.schema().as_str().to_owned(),
            });
        }
        Ok(())
    }
}

/// The next thing a checkout must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Run the reset batch ([`reset_sql`](super::reset_sql)), then plan again.
    Reset,
    /// Ask whether the session's temporary schema holds objects
    /// ([`TempObjects`](super::TempObjects)), then plan again.
    ProbeTemp,
    /// Read the session's state back ([`CurrentState`](super::CurrentState)):
    /// the liveness check when the path is already in place.
    ReadBack,
    /// Read the backend's memory ([`BackendMemory`](super::BackendMemory)),
    /// then plan again.
    SampleMemory,
    /// Set the path (and the role, with `role`), for the session or, with
    /// `local`, for a transaction the pool opens first
    /// ([`SetPath`](super::SetPath)).
    Set {
        path: String,
        role: Option<String>,
        local: bool,
    },
    /// Hand the connection out.
    Ready,
}

/// What to do with a connection whose borrow has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Back to the pool as it is.
    Keep,
    /// Run the reset batch, then back to the pool (or closed if it fails).
    Reset,
    /// Close it.
    Discard,
}

/// What is known about one physical connection's session.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// The scope and path text the session is known to hold; `None` when
    /// unknown.
    current: Option<(ScopeKey, String)>,
    /// The session user when the connection was new: the baseline the
    /// checkout compares with (`SET SESSION AUTHORIZATION` changes it).
    login_user: Option<String>,
    /// A statement of the borrow may have left session state behind.
    left_state: bool,
    /// The path may differ from `current` (an error, a rollback).
    path_dirty: bool,
    /// Reset the session before it is handed out again.
    pending_reset: bool,
    /// Checkouts since the backend's memory was last sampled.
    since_sample: u32,
    /// Schemas new to this connection since the last sample.
    new_schemas: u32,
    /// The session has a temporary schema that has not been checked for
    /// objects during this checkout.
    temp_unchecked: bool,
    /// The session's state was read back during this checkout.
    verified: bool,
    /// Statements started and not finished: non-zero when a borrower's future
    /// was dropped mid-query (async pool).
    pub(crate) in_flight: u32,
    /// Close this connection instead of keeping it.
    pub(crate) discard: bool,
    /// A borrow scoped this connection and has not been released yet.
    pub(crate) in_borrow: bool,
    /// Hashes of the schemas this connection has been scoped to (the recycle
    /// rule); a collision only makes the count low by one.
    schemas: HashSet<u64>,
}

impl ConnState {
    /// A statement not proven harmless was sent: reset at release.
    pub(crate) fn borrower_left_state(&mut self) {
        self.left_state = true;
        self.path_dirty = true;
    }

    /// An error or a rollback: the path may no longer be the remembered one
    /// (costs nothing: the next checkout's statement sets it).
    pub(crate) fn path_may_have_changed(&mut self) {
        self.path_dirty = true;
    }

    /// Whether the session is known to hold `scope`'s path (the same-tenant
    /// fast path).
    pub(crate) fn holds(&self, scope: &ScopeKey) -> bool {
        self.current
            .as_ref()
            .is_some_and(|(known, _)| known == scope)
    }

    /// The next step of a checkout for `scope`.
    ///
    /// `local` is whether a path set now lasts for a transaction the pool opens
    /// (transaction-scoped mode) or for the session.
    pub(crate) fn plan(&mut self, cfg: &ScopeConfig, scope: &ScopeKey, local: bool) -> Step {
        if self.pending_reset {
            return Step::Reset;
        }
        if self.temp_unchecked {
            return Step::ProbeTemp;
        }
        if cfg.recycle_above_bytes.is_some()
            && !local
            && (self.new_schemas >= MEMORY_SAMPLE_NEW_SCHEMAS
                || self.since_sample >= MEMORY_SAMPLE_EVERY)
            && !cfg.memory_unreadable.load(Ordering::Relaxed)
        {
            return Step::SampleMemory;
        }
        if self.verified && self.holds(scope) {
            // Set or read back during this checkout.
            return Step::Ready;
        }
        if cfg.track_search_path && self.holds(scope) {
            return if cfg.test_on_check_out {
                Step::ReadBack
            } else {
                Step::Ready
            };
        }
        cfg.path_sets.fetch_add(1, Ordering::Relaxed);
        if cfg.recycle_after_schemas.is_some() || cfg.recycle_above_bytes.is_some() {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(scope.head());
            if self.schemas.insert(hash) {
                self.new_schemas = self.new_schemas.saturating_add(1);
            }
            if cfg
                .recycle_after_schemas
                .is_some_and(|max| self.schemas.len() as u64 >= max)
            {
                // Finishes this borrow, then is replaced.
                self.discard = true;
            }
        }
        self.current = None;
        Step::Set {
            path: scope.search_path(&cfg.extra_schemas),
            role: cfg.tenant_roles.then(|| scope.role_setting().to_owned()),
            local,
        }
    }

    /// A checkout begins: counts it and forgets what the last borrow's
    /// classification left, which [`release`](Self::release) has handled.
    pub(crate) fn begin_checkout(&mut self, cfg: &ScopeConfig) {
        cfg.scoped.fetch_add(1, Ordering::Relaxed);
        self.since_sample = self.since_sample.saturating_add(1);
    }

    /// The answer to [`Step::SampleMemory`]: a backend past the cap finishes
    /// this borrow and is then replaced. A sample that cannot be read turns
    /// sampling off for the pool (the statement failed outside any
    /// transaction, so it changed nothing).
    pub(crate) fn settle_memory(&mut self, cfg: &ScopeConfig, answer: diesel::QueryResult<i64>) {
        self.since_sample = 0;
        self.new_schemas = 0;
        match answer {
            Ok(bytes) => {
                cfg.memory_samples.fetch_add(1, Ordering::Relaxed);
                let over = cfg
                    .recycle_above_bytes
                    .is_some_and(|cap| u64::try_from(bytes).unwrap_or(0) > cap);
                if over && !self.discard {
                    cfg.memory_recycles.fetch_add(1, Ordering::Relaxed);
                    self.discard = true;
                }
            }
            Err(_) => cfg.memory_unreadable.store(true, Ordering::Relaxed),
        }
    }

    /// The answer to [`Step::ReadBack`] or [`Step::Set`] (`set` tells which).
    pub(crate) fn settle(
        &mut self,
        cfg: &ScopeConfig,
        scope: &ScopeKey,
        set: Option<&str>,
        answer: diesel::QueryResult<ServerState>,
    ) -> crate::Result<()> {
        // Our own statement is no reason to distrust the path. What a borrower
        // sent before (a plain borrow scoped again) still counts at release.
        self.path_dirty = false;
        let server = match answer {
            Ok(server) => server,
            Err(source) => {
                self.current = None;
                self.discard = true;
                return Err(Error::Scope {
                    scope: scope.head().to_owned(),
                    source,
                });
            }
        };
        let login = self
            .login_user
            .get_or_insert_with(|| server.session_user.clone());
        let expected_user = match scope {
            ScopeKey::Tenant(_, Some(role), _) if cfg.tenant_roles => role.as_str(),
            _ => login.as_str(),
        };
        if server.session_user != *login || server.current_user != expected_user {
            // SET ROLE or SET SESSION AUTHORIZATION where no statement showed
            // it (a server-side function): reset, then set the path again.
            self.current = None;
            self.pending_reset = true;
            return Ok(());
        }
        if server.temp_schema {
            self.temp_unchecked = true;
        }
        match set {
            Some(path) => {
                if let ScopeKey::Tenant(schema, _, _) = scope {
                    if server.head.as_deref() != Some(schema.as_str()) {
                        // The path names a schema that does not exist. The
                        // statement changed nothing else; the path is
                        // forgotten and the connection never handed out on it.
                        self.current = None;
                        self.temp_unchecked = false;
                        return Err(Error::SchemaMissing {
                            schema: schema.as_str().to_owned(),
                        });
                    }
                }
                self.current = Some((scope.clone(), path.to_owned()));
                self.check_identity(scope, &server)?;
                self.verified = true;
            }
            None => {
                let holds = self.current.as_ref().is_some_and(|(known, text)| {
                    known == scope
                        && *text == server.path
                        && server.head.as_deref() == Some(scope.head())
                });
                if holds {
                    self.check_identity(scope, &server)?;
                    self.verified = true;
                } else {
                    self.current = None;
                }
            }
        }
        Ok(())
    }

    /// Refuses a path whose schema is no longer the one the tenant was looked
    /// up with: a rename gave its name to another schema (two tenants that
    /// swap names, say). The path is forgotten; the connection is kept.
    fn check_identity(&mut self, scope: &ScopeKey, server: &ServerState) -> crate::Result<()> {
        if let ScopeKey::Tenant(schema, _, Some(oid)) = scope {
            if server.head_oid != Some(*oid) {
                self.current = None;
                self.verified = false;
                return Err(Error::SchemaReplaced {
                    schema: schema.as_str().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The answer to [`Step::ProbeTemp`].
    pub(crate) fn settle_probe(
        &mut self,
        scope: &ScopeKey,
        answer: diesel::QueryResult<bool>,
    ) -> crate::Result<()> {
        self.temp_unchecked = false;
        match answer {
            Ok(true) => {
                self.pending_reset = true;
                self.current = None;
                self.verified = false;
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(source) => {
                self.discard = true;
                Err(Error::Scope {
                    scope: scope.head().to_owned(),
                    source,
                })
            }
        }
    }

    /// The result of running the reset batch, at a checkout or at release.
    /// The session holds the server's default path afterwards.
    pub(crate) fn settle_reset(&mut self, cfg: &ScopeConfig, ok: bool) {
        cfg.resets.fetch_add(1, Ordering::Relaxed);
        self.pending_reset = false;
        self.left_state = false;
        self.path_dirty = false;
        self.temp_unchecked = false;
        self.current = None;
        self.verified = false;
        if !ok {
            self.discard = true;
        }
    }

    /// The r2d2 liveness check (`ManageConnection::is_valid`, for pools built
    /// with r2d2's own builder) read the state: it counts as this checkout's
    /// read-back if it shows the remembered path.
    #[cfg_attr(not(feature = "sync"), allow(dead_code))]
    pub(crate) fn settle_liveness(&mut self, server: &ServerState) {
        let holds = self.current.as_ref().is_some_and(|(known, text)| {
            *text == server.path && server.head.as_deref() == Some(known.head())
        });
        let users_ok = self
            .login_user
            .as_ref()
            .is_none_or(|login| *login == server.session_user);
        if !holds || !users_ok {
            self.current = None;
        }
        if !users_ok {
            self.pending_reset = true;
        }
        if server.temp_schema {
            self.temp_unchecked = true;
        }
        self.verified = holds && users_ok;
        self.path_dirty = false;
    }

    /// The borrow has ended: keep, reset or discard. `in_transaction` is
    /// Diesel's transaction depth (`None` if its manager is broken), after the
    /// pool ended its own transaction in transaction-scoped mode.
    pub(crate) fn release(
        &mut self,
        cfg: &ScopeConfig,
        in_transaction: Option<bool>,
        panicking: bool,
    ) -> Release {
        self.in_borrow = false;
        self.verified = false;
        self.temp_unchecked = false;
        if self.path_dirty || cfg.transaction_scoped {
            // In transaction-scoped mode the path ended with the transaction.
            self.current = None;
        }
        let left_state = std::mem::take(&mut self.left_state);
        self.path_dirty = false;
        if panicking || self.in_flight > 0 || self.discard || in_transaction != Some(false) {
            // Stopped at an unknown point, mid-query, a Diesel transaction
            // left open, or due for replacement.
            self.current = None;
            self.discard = true;
            return Release::Discard;
        }
        if left_state || self.pending_reset || cfg.reset_after_every_borrow {
            self.current = None;
            return Release::Reset;
        }
        Release::Keep
    }
}

#[cfg(test)]
mod tests;
