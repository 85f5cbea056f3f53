//! The crate's error type.

use crate::{DomainError, SchemaNameError};

/// A shorthand for `Result<T, diesel_tenancy::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a migration source or harness.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
///
/// Each variant names what it was working on (tenant schema, domain, migration);
/// the underlying cause, if any, is reached through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call of `for_each_tenant` ended the transaction the run gave it
    /// (`COMMIT` or `ROLLBACK` sent by hand), so what it did before that may
    /// have been committed whatever it returned.
    #[error(
        "the call for tenant {schema:?} ended the transaction the run gave it (COMMIT or ROLLBACK by hand), so what it did before may have been committed: check the tenant"
    )]
    TransactionEndedByCall {
        /// The tenant's schema.
        schema: String,
    },

    /// A string is not a valid tenant schema name.
    #[error(transparent)]
    InvalidSchemaName(#[from] SchemaNameError),

    /// A string is not a valid domain name.
    #[error(transparent)]
    InvalidDomain(#[from] DomainError),

    /// The pool could not be built from its settings.
    #[error("invalid pool configuration: {reason}")]
    Config {
        /// What is wrong with the settings.
        reason: String,
    },

    /// A connection could not be opened or checked out of the pool.
    #[cfg(feature = "sync")]
    #[error("could not get a database connection")]
    Pool(#[source] r2d2::Error),

    /// No connection could be checked out of an
    /// [`AsyncTenantPool`](crate::AsyncTenantPool): none came free within the
    /// connection timeout, or a new one could not be opened.
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    #[error("could not get a database connection from the {pool} pool: {reason}")]
    AsyncPool {
        /// The pool underneath: `"deadpool"` or `"bb8"`.
        pool: &'static str,
        /// Whether the checkout gave up after waiting its connection timeout.
        timed_out: bool,
        /// What happened.
        reason: String,
        /// The cause, when there is one: the error opening a connection
        /// (diesel-async's `PoolError`).
        #[source]
        source: Option<BoxError>,
    },

    /// A connection could not be opened.
    #[error("could not connect to the database")]
    Connect(#[source] diesel::ConnectionError),

    /// No tenant with this schema name is in the registry.
    #[error("tenant {schema:?} is not in the registry")]
    TenantNotFound {
        /// The schema name that was looked up.
        schema: String,
    },

    /// No tenant with this id is in the registry.
    #[error("no tenant with id {id} is in the registry")]
    TenantIdNotFound {
        /// The id that was looked up.
        id: i64,
    },

    /// The tenant exists but is suspended, so no connection is scoped to it.
    #[error("tenant {schema:?} is suspended")]
    TenantSuspended {
        /// The tenant's schema.
        schema: String,
    },

    /// A tenant with this schema name already exists.
    #[error("tenant {schema:?} already exists")]
    TenantExists {
        /// The schema name that is taken.
        schema: String,
    },

    /// The tenant is in the registry, but its schema is not in the database.
    #[error("the schema of tenant {schema:?} does not exist in the database")]
    SchemaMissing {
        /// The tenant's schema.
        schema: String,
    },

    /// The tenant's schema name now denotes another schema than when the
    /// tenant was looked up (a rename gave the name to another tenant's
    /// schema, as when two tenants swap names), so no connection is scoped to
    /// it. Look the tenant up again.
    #[error(
        "the schema named {schema:?} is no longer the one this tenant was looked up with (renamed since); look the tenant up again"
    )]
    SchemaReplaced {
        /// The schema name the tenant snapshot holds.
        schema: String,
    },

    /// A schema of this name exists already, but no tenant owns it.
    #[error("schema {schema:?} already exists in the database")]
    SchemaExists {
        /// The schema name.
        schema: String,
    },

    /// The domain is already assigned to a tenant.
    #[error("domain {domain:?} is already assigned to a tenant")]
    DomainTaken {
        /// The normalised domain.
        domain: String,
    },

    /// The domain is not in the registry.
    #[error("domain {domain:?} is not in the registry")]
    DomainNotFound {
        /// The normalised domain.
        domain: String,
    },

    /// Setting a connection's search path for a tenant failed.
    #[error("could not scope the connection to {scope}")]
    Scope {
        /// The scope: a tenant's schema name, or `public`.
        scope: String,
        /// The database error.
        #[source]
        source: diesel::result::Error,
    },

    /// A migration failed.
    #[error("migration {version} failed on schema {schema}", version = version.as_deref().unwrap_or("(harness)"))]
    Migration {
        /// The schema being migrated (`public` for shared migrations).
        schema: String,
        /// The version of the failing migration, when known.
        version: Option<String>,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// A migration run finished with failures; the full report is attached.
    #[error("migration run failed: {summary}")]
    MigrationsFailed {
        /// One line: how many failed, and the first failure.
        summary: String,
        /// What happened to every tenant.
        report: Box<crate::MigrationReport>,
    },

    /// The pool switches to tenant roles, and this tenant has none.
    #[error(
        "tenant {schema:?} has no role, and the pool switches to tenant roles; create one with ensure_tenant_role"
    )]
    TenantRoleMissing {
        /// The tenant's schema.
        schema: String,
    },

    /// The tenant's schema is one of the pool's extra schemas, which are on
    /// every path: scoping to it would show it to every tenant.
    #[error("tenant {schema:?} uses a schema the pool puts on every path as an extra schema")]
    SchemaOnEveryPath {
        /// The tenant's schema.
        schema: String,
    },

    /// Another migration run, drop, rename or move holds the schema's lock.
    #[error(
        "schema {schema:?} is locked by a migration run or another tenant operation; try again when it ends"
    )]
    SchemaLocked {
        /// The locked schema.
        schema: String,
    },

    /// A connection could not be scoped safely, so it was closed instead of
    /// handed out (its instrumentation was replaced, its session could not be
    /// reset, or it kept changing under the checkout).
    #[error("{reason} (scope {scope})")]
    Unscopable {
        /// The scope asked for: a tenant's schema, or `public`.
        scope: String,
        /// What went wrong.
        reason: String,
    },

    /// A transaction-scoped borrow's transaction was rolled back instead of
    /// committed, because a statement of the borrow was dropped before it
    /// finished.
    #[error(
        "the transaction scoped to {scope} was not committed: a statement of the borrow was dropped before it finished, so it is rolled back"
    )]
    NotCommitted {
        /// The scope of the borrow.
        scope: String,
    },

    /// A thread or task doing the crate's work panicked or was cancelled (its
    /// runtime shut down).
    #[error("{task} did not complete: {reason}")]
    TaskFailed {
        /// What the task was doing, e.g. `create tenant "acme"`.
        task: String,
        /// The panic or cancellation.
        reason: String,
    },

    /// A blocking call was made on a value built on an async pool: use the
    /// `_async` counterpart named here.
    #[error("this resolver looks tenants up through an async pool: call {instead}")]
    AsyncPoolOnly {
        /// The call to make instead.
        instead: &'static str,
    },

    /// `public`'s migration ledger records tenant migrations: the tenant set
    /// was run on `public`, so its tables there are visible to every tenant.
    #[error(
        "public's migration ledger records tenant migrations ({}): the tenant set was run on public, so its tables there are visible to every tenant; drop those tables and ledger rows from public, then migrate again",
        versions.join(", ")
    )]
    TenantSetInPublic {
        /// The tenant migrations public's ledger records.
        versions: Vec<String>,
    },

    /// A new tenant's schema cannot be created in one transaction: a
    /// migration of the tenant set runs outside transactions.
    #[error(
        "migration {version} has run_in_transaction = false, so schema {schema:?} cannot be created in one transaction; create the tenant with the transactional migrations, then migrate it"
    )]
    NonTransactionalMigration {
        /// The schema being created.
        schema: String,
        /// The migration marked `run_in_transaction = false`.
        version: String,
    },

    /// A registry or database operation failed.
    #[error("{action} failed")]
    Database {
        /// What was being done, e.g. `create tenant "acme"`.
        action: String,
        /// The database error.
        #[source]
        source: diesel::result::Error,
    },

    /// A Citus operation was asked of a database that does not run Citus.
    #[error("the database does not run Citus (the citus extension is not installed in it)")]
    NotCitus,

    /// No node of the Citus cluster has this address.
    #[error("{node} is not a node of the Citus cluster")]
    NodeNotFound {
        /// The address given, `host:port`.
        node: String,
    },

    /// The tenant's schema is not a distributed schema with tables, so Citus
    /// has not placed it on a node.
    #[error(
        "tenant {schema:?} is not placed on a Citus node (its schema is not distributed, or has no tables)"
    )]
    NotDistributed {
        /// The tenant's schema.
        schema: String,
    },

    /// A row in the registry holds a value this crate cannot read (it was edited by hand).
    #[error("registry row is corrupt: {reason}")]
    CorruptRegistry {
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn db(action: impl Into<String>) -> impl FnOnce(diesel::result::Error) -> Error {
        let action = action.into();
        move |source| Error::Database { action, source }
    }
}

/// Lets a transaction closure return [`Error`]: Diesel reports `BEGIN`/`COMMIT`
/// failures through this conversion. An [`Error`] that went through Diesel's
/// error type (see the conversion the other way) comes back as itself, so a
/// refusal keeps its variant through a transaction.
impl From<diesel::result::Error> for Error {
    fn from(source: diesel::result::Error) -> Self {
        match source {
            diesel::result::Error::QueryBuilderError(inner) if inner.is::<Error>() => {
                match inner.downcast::<Error>() {
                    Ok(error) => *error,
                    Err(inner) => Error::Database {
                        action: "transaction".into(),
                        source: diesel::result::Error::QueryBuilderError(inner),
                    },
                }
            }
            source => Error::Database {
                action: "transaction".into(),
                source,
            },
        }
    }
}

/// Lets closures given to [`TenantPool::with_tenant`](crate::TenantPool::with_tenant)
/// return `diesel::QueryResult`: a checkout error then arrives as
/// `diesel::result::Error::QueryBuilderError` holding this crate's [`Error`].
impl From<Error> for diesel::result::Error {
    fn from(error: Error) -> Self {
        diesel::result::Error::QueryBuilderError(Box::new(error))
    }
}

/// An error and its causes, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
