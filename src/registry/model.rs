//! The registry's rows as this crate hands them out.

use super::*;

use std::time::SystemTime;

use crate::{Domain, Error, Result, SchemaName};

use diesel::prelude::*;

/// Whether a tenant is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TenantStatus {
    /// Served normally.
    Active,
    /// Kept, but no connection is scoped to it and its hosts do not resolve.
    Suspended,
}

impl TenantStatus {
    /// The value stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(TenantStatus::Active),
            "suspended" => Ok(TenantStatus::Suspended),
            other => Err(Error::CorruptRegistry {
                reason: format!("unknown tenant status {other:?}"),
            }),
        }
    }
}

/// A tenant as recorded in the registry.
///
/// Only the registry makes these, so holding one means the tenant was found (or
/// created) there; scoping a connection to it costs no registry query.
///
/// A `Tenant` is a snapshot of its registry row when it was looked up. A pool
/// refuses a snapshot whose status is suspended, but a snapshot taken before
/// [`suspend_tenant`](crate::suspend_tenant) still gets connections; fresh
/// lookups ([`TenantPool::tenant`](crate::TenantPool::tenant), the
/// [`Resolver`](crate::Resolver), whose cache the registry's notifications
/// invalidate) see the suspension. Look a tenant up per request or job rather
/// than holding the value for the life of a process.
///
/// A snapshot also records which schema its name denoted when it was looked
/// up (the schema's object id). A checkout compares it with the schema the
/// path reaches, in the statement it sends anyway, and refuses with
/// [`Error::SchemaReplaced`](crate::Error::SchemaReplaced) when a rename
/// has since given the name to another schema: a snapshot of tenant A never
/// reads tenant B's rows after A and B swap names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub(super) id: i64,
    pub(super) schema: SchemaName,
    pub(super) name: String,
    pub(super) status: TenantStatus,
    pub(super) created_at: SystemTime,
    pub(super) role: Option<SchemaName>,
    /// The object id of the schema the name denoted at lookup, if it existed.
    pub(super) schema_oid: Option<u32>,
}

impl Tenant {
    /// The tenant's own database role, if it has one (see
    /// [`TenantPoolBuilder::tenant_roles`](crate::TenantPoolBuilder::tenant_roles)).
    pub fn role(&self) -> Option<&SchemaName> {
        self.role.as_ref()
    }

    /// The registry id.
    pub fn id(&self) -> i64 {
        self.id
    }
    /// The tenant's schema.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }
    /// The display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Active or suspended.
    pub fn status(&self) -> TenantStatus {
        self.status
    }
    /// Whether connections may be scoped to the tenant.
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }
    /// When the tenant was registered.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }
    /// The object id of the schema the tenant's name denoted when this
    /// snapshot was taken (`None` if it did not exist then).
    pub(crate) fn schema_oid(&self) -> Option<u32> {
        self.schema_oid
    }
}

/// A registry row as a write returns it: without the schema's object id, which
/// `RETURNING` cannot compute on Citus (it refuses functions that are not
/// immutable there); the writes that return a [`Tenant`] read it after.
#[derive(Queryable, Selectable)]
#[diesel(table_name = tenancy_tenants, check_for_backend(diesel::pg::Pg))]
pub(super) struct WrittenRow {
    pub(super) id: i64,
    pub(super) schema_name: String,
    pub(super) name: String,
    pub(super) status: String,
    pub(super) created_at: SystemTime,
    pub(super) role_name: Option<String>,
}

/// A registry row as a lookup reads it: with the object id of its schema.
#[derive(Queryable, Selectable)]
#[diesel(table_name = tenancy_tenants, check_for_backend(diesel::pg::Pg))]
pub(super) struct TenantRow {
    #[diesel(embed)]
    pub(super) row: WrittenRow,
    #[diesel(select_expression = diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::Oid>>(SCHEMA_OID))]
    #[diesel(select_expression_type = diesel::expression::SqlLiteral<diesel::sql_types::Nullable<diesel::sql_types::Oid>>)]
    pub(super) schema_oid: Option<u32>,
}

/// The object id of the schema a registry row names, as an SQL expression on
/// `tenancy_tenants` (a catalog cache lookup, no table read).
pub(super) const SCHEMA_OID: &str =
    "pg_catalog.to_regnamespace(pg_catalog.quote_ident(\"tenancy_tenants\".\"schema_name\"))::oid";

impl TryFrom<TenantRow> for Tenant {
    type Error = Error;
    fn try_from(row: TenantRow) -> Result<Tenant> {
        Tenant::from_row(row.row, row.schema_oid)
    }
}

/// A written row: the schema's object id is read after (see [`WrittenRow`]).
impl TryFrom<WrittenRow> for Tenant {
    type Error = Error;
    fn try_from(row: WrittenRow) -> Result<Tenant> {
        Tenant::from_row(row, None)
    }
}

impl Tenant {
    pub(super) fn from_row(row: WrittenRow, schema_oid: Option<u32>) -> Result<Tenant> {
        let corrupt = |e: crate::SchemaNameError| Error::CorruptRegistry {
            reason: e.to_string(),
        };
        Ok(Tenant {
            id: row.id,
            schema: SchemaName::try_from(row.schema_name).map_err(corrupt)?,
            name: row.name,
            status: TenantStatus::parse(&row.status)?,
            created_at: row.created_at,
            role: row
                .role_name
                .map(SchemaName::try_from)
                .transpose()
                .map_err(corrupt)?,
            schema_oid,
        })
    }
}

/// A domain that routes to a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// The normalised domain.
    pub domain: Domain,
    /// The tenant's registry id.
    pub tenant_id: i64,
    /// Whether this is the tenant's primary domain (at most one per tenant).
    pub is_primary: bool,
}

/// A tenant's line in the migration journal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalEntry {
    /// The tenant's registry id.
    pub tenant_id: i64,
    /// The latest version of the tenant set applied when the set was last
    /// completed.
    pub latest_version: Option<String>,
    /// The last migration error, if the last attempt failed.
    pub last_error: Option<String>,
    /// The version that failed.
    pub last_error_version: Option<String>,
}

#[derive(QueryableByName)]
pub(super) struct JournalRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) tenant_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub(super) latest_version: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub(super) last_error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub(super) last_error_version: Option<String>,
}
