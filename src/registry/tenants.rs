//! Reading and writing tenant rows.

use super::*;

use diesel::prelude::*;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::conn::PgConn;
use crate::{Error, Result, SchemaName};

pub(super) fn unique_violation(e: &DieselError) -> Option<&str> {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            Some(info.constraint_name().unwrap_or(""))
        }
        _ => None,
    }
}

/// A lookup's row, if any, as a [`Tenant`]; `action` names the lookup in
/// the error.
pub(super) fn found(
    row: QueryResult<TenantRow>,
    action: impl Into<String>,
) -> Result<Option<Tenant>> {
    row.optional()
        .map_err(Error::db(action))?
        .map(Tenant::try_from)
        .transpose()
}

/// Adds a tenant row (status active). This writes the registry only; to create the
/// schema and run migrations as well, use [`create_tenant`](crate::create_tenant).
pub fn insert_tenant(conn: &mut impl PgConn, schema: &SchemaName, name: &str) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::insert_into(tenancy_tenants::table)
            .values((
                tenancy_tenants::schema_name.eq(schema.as_str()),
                tenancy_tenants::name.eq(name),
            ))
            .returning(WrittenRow::as_returning())
            .get_result(conn)
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::TenantExists {
                    schema: schema.as_str().to_owned(),
                },
                None => Error::Database {
                    action: format!("register tenant {schema:?}", schema = schema.as_str()),
                    source: e,
                },
            })?;
        // Usually written before its schema exists: the caller reads the
        // schema's object id once it does.
        Tenant::try_from(row)
    })
}

/// The tenant with this schema, if registered (whatever its status).
pub fn find_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Option<Tenant>> {
    let row = tenancy_tenants::table
        .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
        .select(TenantRow::as_select())
        .first(conn);
    found(row, format!("find tenant {:?}", schema.as_str()))
}

/// The tenant with this schema (whatever its status), or [`Error::TenantNotFound`].
pub fn get_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Tenant> {
    find_tenant(conn, schema)?.ok_or_else(|| Error::TenantNotFound {
        schema: schema.as_str().to_owned(),
    })
}

/// The tenant with this registry id, if any.
pub fn find_tenant_by_id(conn: &mut impl PgConn, id: i64) -> Result<Option<Tenant>> {
    let row = tenancy_tenants::table
        .find(id)
        .select(TenantRow::as_select())
        .first(conn);
    found(row, format!("find tenant with id {id}"))
}

/// Every registered tenant, ordered by schema name.
pub fn list_tenants(conn: &mut impl PgConn) -> Result<Vec<Tenant>> {
    tenancy_tenants::table
        .order(tenancy_tenants::schema_name)
        .select(TenantRow::as_select())
        .load(conn)
        .map_err(Error::db("list tenants"))?
        .into_iter()
        .map(Tenant::try_from)
        .collect()
}

/// Sets a tenant's status and returns the updated tenant.
pub fn set_tenant_status(
    conn: &mut impl PgConn,
    schema: &SchemaName,
    status: TenantStatus,
) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::update(tenancy_tenants::table)
            .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
            .set(tenancy_tenants::status.eq(status.as_str()))
            .returning(WrittenRow::as_returning())
            .get_result(conn)
            .optional()
            .map_err(Error::db(format!(
                "set status of tenant {:?}",
                schema.as_str()
            )))?;
        match row {
            Some(row) => with_schema_oid(conn, Tenant::try_from(row)?),
            None => Err(Error::TenantNotFound {
                schema: schema.as_str().to_owned(),
            }),
        }
    })
}

/// Deletes a tenant's row (its domains and journal entry go with it). Returns
/// the number of rows deleted. The schema is not touched: see
/// [`drop_tenant`](crate::drop_tenant).
pub(crate) fn delete_tenant_row(conn: &mut impl PgConn, schema: &SchemaName) -> Result<usize> {
    after_write(|| {
        diesel::delete(tenancy_tenants::table)
            .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
            .execute(conn)
            .map_err(Error::db(format!("delete tenant {:?}", schema.as_str())))
    })
}

/// Points a tenant's row at a new schema name.
pub(crate) fn rename_tenant_row(
    conn: &mut impl PgConn,
    from: &SchemaName,
    to: &SchemaName,
) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::update(tenancy_tenants::table)
            .filter(tenancy_tenants::schema_name.eq(from.as_str()))
            .set(tenancy_tenants::schema_name.eq(to.as_str()))
            .returning(WrittenRow::as_returning())
            .get_result(conn)
            .optional()
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::TenantExists {
                    schema: to.as_str().to_owned(),
                },
                None => Error::Database {
                    action: format!("rename tenant {:?}", from.as_str()),
                    source: e,
                },
            })?;
        match row {
            // The schema is renamed after the row: the caller reads its id then.
            Some(row) => Tenant::try_from(row),
            None => Err(Error::TenantNotFound {
                schema: from.as_str().to_owned(),
            }),
        }
    })
}

/// Records a tenant's role name.
pub(crate) fn set_role_name(conn: &mut impl PgConn, id: i64, role: &SchemaName) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::update(tenancy_tenants::table.find(id))
            .set(tenancy_tenants::role_name.eq(role.as_str()))
            .returning(WrittenRow::as_returning())
            .get_result(conn)
            .map_err(Error::db(format!("record role {role}")))?;
        with_schema_oid(conn, Tenant::try_from(row)?)
    })
}

/// [`find_tenant`] on an async connection (one query, no libpq).
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) async fn find_tenant_async(
    conn: &mut diesel_async::AsyncPgConnection,
    schema: &SchemaName,
) -> Result<Option<Tenant>> {
    let query = tenancy_tenants::table
        .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
        .select(TenantRow::as_select())
        .limit(1);
    let row = diesel_async::RunQueryDsl::get_result(query, conn).await;
    found(row, format!("find tenant {:?}", schema.as_str()))
}

/// `tenant` with the object id its schema has now: for the value returned by
/// a write that created or renamed the schema after writing the row.
pub(crate) fn with_schema_oid(conn: &mut impl PgConn, mut tenant: Tenant) -> Result<Tenant> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Oid>)]
        oid: Option<u32>,
    }
    let row = diesel::sql_query(
        "SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::oid AS oid",
    )
    .bind::<diesel::sql_types::Text, _>(tenant.schema.as_str())
    .get_result::<Row>(conn)
    .map_err(Error::db(format!(
        "read schema {:?}",
        tenant.schema.as_str()
    )))?;
    tenant.schema_oid = row.oid;
    Ok(tenant)
}
