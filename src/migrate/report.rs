//! What a migration run did, tenant by tenant.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind};

use crate::{Error, SchemaName};

/// What happened to one schema in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Pending migrations were applied (all of them, or none: see
    /// [`Outcome::Failed`]).
    Applied {
        /// The versions applied, in order.
        versions: Vec<String>,
        /// Those of them marked `run_in_transaction = false`, each of which ran on
        /// its own, outside the tenant's transaction.
        non_transactional: Vec<String>,
    },
    /// Nothing was pending.
    UpToDate,
    /// Dry run: these versions would be applied.
    Pending {
        /// The pending versions, in order.
        versions: Vec<String>,
    },
    /// A migration failed; the schema's transaction was rolled back, so the
    /// schema is as it was before the run (except for non-transactional
    /// migrations that had already completed, listed in `applied`).
    Failed {
        /// The failing migration's version, if the failure was in a migration.
        version: Option<String>,
        /// The server's (or harness's) error, with its chain.
        error: MigrationError,
        /// Non-transactional migrations completed before the failure.
        applied: Vec<String>,
    },
    /// The tenant is registered but its schema does not exist; nothing was done
    /// (in particular, nothing fell through to `public`).
    SchemaMissing,
    /// A migration marked `run_in_transaction = false` did not run, because
    /// the schema was not at the head of the search path when its turn came:
    /// the schema was dropped or renamed since the run started, or the role
    /// cannot use it. Nothing ran anywhere else (in particular not in `public`).
    SchemaNotOnPath {
        /// The schema that had to be at the head of the search path.
        schema: String,
        /// The migration that did not run.
        version: String,
        /// What `current_schema()` was instead (`None`: no usable schema on
        /// the path).
        current_schema: Option<String>,
        /// Migrations of this run already committed before it, in order.
        applied: Vec<String>,
    },
    /// Skipped: another run held this schema's migration lock
    /// ([`LockMode::Skip`](crate::LockMode::Skip)).
    Locked,
    /// Not attempted: the run stopped at an earlier failure (`fail_fast`), or
    /// the shared migrations failed.
    NotRun,
}

impl Outcome {
    /// Whether this outcome is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Failed { .. } | Outcome::SchemaMissing | Outcome::SchemaNotOnPath { .. }
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied {
                versions,
                non_transactional,
            } => {
                write!(f, "applied {}", versions.join(", "))?;
                if !non_transactional.is_empty() {
                    write!(
                        f,
                        " ({} outside a transaction)",
                        non_transactional.join(", ")
                    )?;
                }
                Ok(())
            }
            Outcome::UpToDate => f.write_str("up to date"),
            Outcome::Pending { versions } if versions.is_empty() => f.write_str("up to date"),
            Outcome::Pending { versions } => write!(f, "pending {}", versions.join(", ")),
            Outcome::Failed { version, error, .. } => match version {
                Some(v) => write!(f, "failed at {v}: {error}"),
                None => write!(f, "failed: {error}"),
            },
            Outcome::SchemaMissing => f.write_str("failed: the schema does not exist"),
            Outcome::SchemaNotOnPath {
                schema,
                version,
                current_schema,
                ..
            } => write!(
                f,
                "failed at {version}: {}",
                not_on_path(schema, version, current_schema.as_deref())
            ),
            Outcome::Locked => f.write_str("skipped: locked by another run"),
            Outcome::NotRun => f.write_str("not run"),
        }
    }
}

/// Why [`Outcome::SchemaNotOnPath`]: names the schema and the migration.
pub(crate) fn not_on_path(schema: &str, version: &str, current_schema: Option<&str>) -> String {
    let found = match current_schema {
        Some(s) => format!("current_schema() is {s:?}"),
        None => "no usable schema is on the path".to_owned(),
    };
    format!(
        "schema {schema:?} is not at the head of the search path ({found}: dropped or renamed \
         during the run?), so non-transactional migration {version} did not run"
    )
}

/// One tenant's line in a [`MigrationReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantReport {
    /// The tenant's registry id.
    pub tenant_id: i64,
    /// The tenant's schema.
    pub schema: SchemaName,
    /// What happened.
    pub outcome: Outcome,
    /// Time spent on this tenant.
    pub elapsed: Duration,
}

/// Counts over a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Totals {
    /// Tenants in the run.
    pub tenants: usize,
    /// Tenants that had migrations applied.
    pub applied: usize,
    /// Tenants with nothing pending.
    pub up_to_date: usize,
    /// Tenants with pending migrations (dry run).
    pub pending: usize,
    /// Tenants that failed.
    pub failed: usize,
    /// Tenants skipped because another run held their lock.
    pub locked: usize,
    /// Tenants not attempted.
    pub not_run: usize,
    /// Migrations applied, summed over tenants.
    pub migrations_applied: usize,
}

/// The result of [`Migrator::migrate_all`](crate::Migrator::migrate_all):
/// returned even when some tenants failed. [`MigrationReport::into_result`]
/// turns failures into an [`Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The shared set on `public`, if it was part of the run.
    pub shared: Option<Outcome>,
    /// One entry per tenant, in schema-name order.
    pub tenants: Vec<TenantReport>,
    /// Whether this was a dry run (nothing applied).
    pub dry_run: bool,
    /// Tenants found up to date through the journal, without reading their
    /// ledgers.
    pub decided_by_journal: usize,
    /// Database connections used (connections are replaced every
    /// `recycle_after` schemas to bound backend memory).
    pub connections: usize,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
    /// Whether the database ran as one server or as a Citus cluster.
    pub mode: crate::citus::ClusterMode,
}

impl MigrationReport {
    /// Counts by outcome.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            tenants: self.tenants.len(),
            ..Totals::default()
        };
        for r in &self.tenants {
            match &r.outcome {
                Outcome::Applied { versions, .. } => {
                    t.applied += 1;
                    t.migrations_applied += versions.len();
                }
                Outcome::UpToDate => t.up_to_date += 1,
                Outcome::Pending { versions } if versions.is_empty() => t.up_to_date += 1,
                Outcome::Pending { .. } => t.pending += 1,
                Outcome::Failed { .. }
                | Outcome::SchemaMissing
                | Outcome::SchemaNotOnPath { .. } => t.failed += 1,
                Outcome::Locked => t.locked += 1,
                Outcome::NotRun => t.not_run += 1,
            }
        }
        t
    }

    /// The tenants that failed.
    pub fn failures(&self) -> impl Iterator<Item = &TenantReport> {
        self.tenants.iter().filter(|r| r.outcome.is_failure())
    }

    /// The entry for one schema.
    pub fn tenant(&self, schema: &str) -> Option<&TenantReport> {
        self.tenants.iter().find(|r| r.schema.as_str() == schema)
    }

    /// No failure anywhere, shared set included.
    pub fn is_success(&self) -> bool {
        !self.shared.as_ref().is_some_and(Outcome::is_failure) && self.failures().next().is_none()
    }

    /// `Ok(self)` if nothing failed, else [`Error::MigrationsFailed`] carrying the
    /// report.
    pub fn into_result(self) -> Result<Self, Error> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Error::MigrationsFailed {
                summary: self.failure_summary(),
                report: Box::new(self),
            })
        }
    }

    fn failure_summary(&self) -> String {
        if let Some(shared @ Outcome::Failed { .. }) = &self.shared {
            return format!("shared migrations on public {shared}");
        }
        let failed = self.failures().count();
        match self.failures().next() {
            Some(first) => format!(
                "{failed} tenant(s) failed; first: {} {}",
                first.schema, first.outcome
            ),
            None => String::new(),
        }
    }
}

/// Why a schema's migrations failed, kept as the error itself: the server's
/// error (reachable with [`database_error`](Self::database_error)) or the
/// harness's, with its whole chain. Its `Display` is the chain on one line,
/// as the journal and the command-line tool show it.
#[derive(Clone)]
pub struct MigrationError {
    error: Arc<dyn std::error::Error + Send + Sync + 'static>,
}

impl MigrationError {
    pub(crate) fn new(error: impl Into<crate::BoxError>) -> Self {
        MigrationError {
            error: Arc::from(error.into()),
        }
    }

    /// The error, to inspect or downcast.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The server's error, when the server refused a statement: its kind and
    /// its details (message, detail, hint, constraint).
    pub fn database_error(
        &self,
    ) -> Option<(
        &DatabaseErrorKind,
        &(dyn DatabaseErrorInformation + Send + Sync),
    )> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self.error());
        while let Some(e) = next {
            let diesel = e
                .downcast_ref::<diesel::result::Error>()
                .or_else(|| e.downcast_ref::<InStatement>().map(|s| &s.source));
            if let Some(diesel::result::Error::DatabaseError(kind, info)) = diesel {
                return Some((kind, &**info));
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::error_chain(&*self.error))
    }
}

impl fmt::Debug for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Equal when they read the same (the chain of messages).
impl PartialEq for MigrationError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for MigrationError {}

/// The chain is in `Display`; the typed error is [`MigrationError::error`].
impl std::error::Error for MigrationError {}

impl From<String> for MigrationError {
    fn from(text: String) -> Self {
        MigrationError::new(text)
    }
}

impl From<&str> for MigrationError {
    fn from(text: &str) -> Self {
        MigrationError::new(text)
    }
}

/// A statement of a migration run statement by statement failed.
#[derive(Debug)]
pub(crate) struct InStatement {
    pub(crate) excerpt: String,
    pub(crate) source: diesel::result::Error,
}

impl fmt::Display for InStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (in statement: {})", self.source, self.excerpt)
    }
}

impl std::error::Error for InStatement {}
