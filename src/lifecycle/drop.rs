//! Dropping a tenant, or unregistering it and keeping its schema.

use super::*;

use crate::conn::PgConn;
use crate::registry::{self, Tenant, lock_schema};
use crate::{Error, Result, SchemaName};

/// The confirmation [`drop_tenant`] requires: dropping a tenant deletes its
/// schema with every table and row in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmDrop {
    /// Yes: delete the schema, all of its data, and the registry rows.
    DeleteSchemaAndAllItsData,
}

/// Drops a tenant in one transaction: its schema (`CASCADE`: every table and row
/// in it) and its registry rows (tenant, domains, journal). Waits for a
/// migration run working on the schema. A registry row whose schema is already
/// gone is removed all the same.
///
/// To keep the schema and remove only the registry rows, use
/// [`unregister_tenant_keep_schema`]; to run something first in the same
/// transaction, [`drop_tenant_with`].
pub fn drop_tenant(
    conn: &mut impl PgConn,
    schema: &SchemaName,
    confirm: ConfirmDrop,
) -> Result<()> {
    let ConfirmDrop::DeleteSchemaAndAllItsData = confirm;
    drop_with(conn, schema, no_hook())
}

/// [`drop_tenant`], with `hook` run first in the same transaction, once the
/// schema's lock is held and before anything is deleted: to archive the
/// tenant's rows into a shared table, say. The hook runs with the tenant's
/// schema first on the search path, then `public`, as the creation hook of
/// [`create_tenant_with`] does, and gets the tenant as registered. If it
/// returns an error, nothing is dropped and the error is returned (a Diesel
/// error it passed on with `?` names the hook and the tenant).
///
/// A registry row whose schema is gone still runs the hook, on a path whose
/// first schema does not exist; a hook that then fails keeps the row (drop
/// it with [`drop_tenant`]).
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_tenancy::{ConfirmDrop, SchemaName, drop_tenant_with};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = diesel_tenancy::TenantPool::builder("postgres://localhost/app").build()?;
/// let acme = SchemaName::new("acme")?;
/// pool.with_public(|conn| {
///     drop_tenant_with(conn, &acme, ConfirmDrop::DeleteSchemaAndAllItsData, |conn, tenant| {
///         // `customers` is the tenant's table, `archived_customers` a shared one.
///         diesel::sql_query(
///             "INSERT INTO public.archived_customers (tenant_id, name, email) \
///              SELECT $1, name, email FROM customers",
///         )
///         .bind::<diesel::sql_types::BigInt, _>(tenant.id())
///         .execute(conn)?;
///         Ok(())
///     })
/// })?;
/// # Ok(()) }
/// ```
pub fn drop_tenant_with<C, H>(
    conn: &mut C,
    schema: &SchemaName,
    confirm: ConfirmDrop,
    hook: H,
) -> Result<()>
where
    C: PgConn,
    H: FnOnce(&mut C, &Tenant) -> Result<()>,
{
    let ConfirmDrop::DeleteSchemaAndAllItsData = confirm;
    drop_with(conn, schema, Some(hook))
}

/// [`drop_tenant`] with an optional hook.
pub(super) fn drop_with<C, H>(conn: &mut C, schema: &SchemaName, hook: Option<H>) -> Result<()>
where
    C: PgConn,
    H: FnOnce(&mut C, &Tenant) -> Result<()>,
{
    let session_path = match hook {
        Some(_) => session_path(conn)?,
        None => String::new(),
    };
    committed(conn.transaction(|conn| {
        lock_schema(conn, schema)?;
        let tenant = registry::get_tenant(conn, schema)?;
        if let Some(hook) = hook {
            run_hook(conn, &tenant, Stage::Drop, &session_path, hook)?;
        }
        if registry::delete_tenant_row(conn, schema)? == 0 {
            return Err(Error::TenantNotFound {
                schema: schema.as_str().to_owned(),
            });
        }
        conn.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            schema.quoted()
        ))
        .map_err(schema_error(schema, "drop"))?;
        if let Some(role) = tenant.role() {
            let r = role.quoted();
            conn.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE {r};"))
                .map_err(Error::db(format!("drop role {role}")))?;
        }
        Ok(())
    }))
}

/// Removes a tenant from the registry but keeps its schema, with every table
/// and row in it (django-tenants' `auto_drop_schema = False`): for archiving,
/// or to take a tenant out of service for good without losing its data. In
/// one transaction, under the schema's lock (so it waits for a migration run
/// or another lifecycle operation on the schema): the registry row, its
/// domains and its journal entry. A tenant role, if it has one, is dropped
/// too, after anything it owns is handed to the current user
/// (`REASSIGN OWNED`), so no object in the schema is lost. Returns the tenant
/// as it was registered.
///
/// Lookups (the resolver, `pool.tenant`) stop finding the tenant at once. A
/// [`Tenant`] value looked up before is a snapshot and still gets
/// connections to the kept schema, as after [`suspend_tenant`]: to stop
/// serving it first, suspend it and let the requests under way finish.
///
/// Afterwards the schema is one no tenant owns:
/// [`check_consistency`](crate::check_consistency) lists it in
/// `schemas_without_row` (it holds a migration ledger), and
/// [`create_tenant`] refuses its name with [`Error::SchemaExists`]. To serve
/// it again, [`adopt_tenant_schema`] registers it as a new tenant (a new id,
/// its data as it is, pending migrations applied). To delete it, adopt it
/// and [`drop_tenant`] it, or run `DROP SCHEMA "<name>" CASCADE` yourself.
///
/// ```no_run
/// use diesel_tenancy::{SchemaName, unregister_tenant_keep_schema};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = diesel_tenancy::TenantPool::builder("postgres://localhost/app").build()?;
/// let acme = SchemaName::new("acme")?;
/// let archived = pool.with_public(|conn| unregister_tenant_keep_schema(conn, &acme))?;
/// println!("tenant {} archived; schema {} kept", archived.id(), archived.schema());
/// # Ok(()) }
/// ```
pub fn unregister_tenant_keep_schema(
    conn: &mut impl PgConn,
    schema: &SchemaName,
) -> Result<Tenant> {
    committed(conn.transaction(|conn| {
        lock_schema(conn, schema)?;
        let tenant = registry::get_tenant(conn, schema)?;
        if registry::delete_tenant_row(conn, schema)? == 0 {
            return Err(Error::TenantNotFound {
                schema: schema.as_str().to_owned(),
            });
        }
        if let Some(role) = tenant.role() {
            let r = role.quoted();
            conn.batch_execute(&format!(
                "REASSIGN OWNED BY {r} TO CURRENT_USER; DROP OWNED BY {r}; DROP ROLE {r};"
            ))
            .map_err(Error::db(format!("drop role {role}")))?;
        }
        Ok(tenant)
    }))
}
