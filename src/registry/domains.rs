//! Reading and writing domain rows, and finding a tenant by domain.

use super::*;

use std::time::SystemTime;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::conn::PgConn;
use crate::{Domain, Error, Result};

use diesel::prelude::*;

/// Routes `domain` to `tenant`. With `is_primary`, it becomes the tenant's primary
/// domain (any previous primary domain stays, as a secondary one).
pub fn add_domain(
    conn: &mut impl PgConn,
    tenant: &Tenant,
    domain: &Domain,
    is_primary: bool,
) -> Result<DomainRecord> {
    after_write(|| {
        let action = || format!("add domain {:?}", domain.as_str());
        conn.transaction(|conn| {
            if is_primary {
                diesel::update(tenancy_domains::table)
                    .filter(tenancy_domains::tenant_id.eq(tenant.id))
                    .set(tenancy_domains::is_primary.eq(false))
                    .execute(conn)
                    .map_err(Error::db(action()))?;
            }
            diesel::insert_into(tenancy_domains::table)
                .values((
                    tenancy_domains::domain.eq(domain.as_str()),
                    tenancy_domains::tenant_id.eq(tenant.id),
                    tenancy_domains::is_primary.eq(is_primary),
                ))
                .execute(conn)
                .map_err(|e| match (&e, unique_violation(&e)) {
                    (_, Some(_)) => Error::DomainTaken {
                        domain: domain.as_str().to_owned(),
                    },
                    (
                        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _),
                        None,
                    ) => Error::TenantNotFound {
                        schema: tenant.schema.as_str().to_owned(),
                    },
                    _ => Error::Database {
                        action: action(),
                        source: e,
                    },
                })?;
            Ok(DomainRecord {
                domain: domain.clone(),
                tenant_id: tenant.id,
                is_primary,
            })
        })
    })
}

/// Removes a domain; [`Error::DomainNotFound`] if it was not registered.
pub fn remove_domain(conn: &mut impl PgConn, domain: &Domain) -> Result<()> {
    after_write(|| {
        let n = diesel::delete(tenancy_domains::table.find(domain.as_str()))
            .execute(conn)
            .map_err(Error::db(format!("remove domain {:?}", domain.as_str())))?;
        if n == 0 {
            return Err(Error::DomainNotFound {
                domain: domain.as_str().to_owned(),
            });
        }
        Ok(())
    })
}

/// The domains of a tenant, primary first.
pub fn list_domains(conn: &mut impl PgConn, tenant: &Tenant) -> Result<Vec<DomainRecord>> {
    let rows: Vec<(String, i64, bool)> = tenancy_domains::table
        .filter(tenancy_domains::tenant_id.eq(tenant.id))
        .order((tenancy_domains::is_primary.desc(), tenancy_domains::domain))
        .load(conn)
        .map_err(Error::db(format!(
            "list domains of tenant {:?}",
            tenant.schema.as_str()
        )))?;
    rows.into_iter()
        .map(|(domain, tenant_id, is_primary)| {
            Ok(DomainRecord {
                domain: Domain::parse(&domain).map_err(|e| Error::CorruptRegistry {
                    reason: e.to_string(),
                })?,
                tenant_id,
                is_primary,
            })
        })
        .collect()
}

/// The tenant a domain routes to, if any (whatever its status). One indexed query.
pub fn find_tenant_by_domain(conn: &mut impl PgConn, domain: &Domain) -> Result<Option<Tenant>> {
    let row = tenancy_domains::table
        .inner_join(tenancy_tenants::table)
        .filter(tenancy_domains::domain.eq(domain.as_str()))
        .select(TenantRow::as_select())
        .first(conn);
    found(row, format!("find tenant by domain {:?}", domain.as_str()))
}

/// The SQL of [`find_tenant_and_primary_by_domain`]: the tenant a domain
/// routes to, with the tenant's primary domain.
pub(super) const TENANT_AND_PRIMARY: &str = "\
    SELECT t.id, t.schema_name, t.name, t.status, t.created_at, t.role_name, \
           pg_catalog.to_regnamespace(pg_catalog.quote_ident(t.schema_name))::oid AS schema_oid, \
           (SELECT p.domain FROM public.tenancy_domains p \
            WHERE p.tenant_id = t.id AND p.is_primary LIMIT 1) AS primary_domain \
    FROM public.tenancy_domains d JOIN public.tenancy_tenants t ON t.id = d.tenant_id \
    WHERE d.domain = $1";

#[derive(QueryableByName)]
pub(super) struct TenantAndPrimary {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) schema_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) status: String,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub(super) created_at: SystemTime,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub(super) role_name: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Oid>)]
    pub(super) schema_oid: Option<u32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub(super) primary_domain: Option<String>,
}

impl TenantAndPrimary {
    pub(super) fn split(self) -> Result<(Tenant, Option<Domain>)> {
        let primary = self
            .primary_domain
            .as_deref()
            .map(Domain::parse)
            .transpose()?;
        let row = WrittenRow {
            id: self.id,
            schema_name: self.schema_name,
            name: self.name,
            status: self.status,
            created_at: self.created_at,
            role_name: self.role_name,
        };
        let tenant = Tenant::from_row(row, self.schema_oid)?;
        Ok((tenant, primary))
    }
}

/// The tenant `domain` routes to, and that tenant's primary domain, in one
/// query (for redirecting secondary domains to the primary one).
#[cfg(feature = "sync")]
pub(crate) fn find_tenant_and_primary_by_domain(
    conn: &mut impl PgConn,
    domain: &Domain,
) -> Result<Option<(Tenant, Option<Domain>)>> {
    let row = diesel::sql_query(TENANT_AND_PRIMARY)
        .bind::<diesel::sql_types::Text, _>(domain.as_str())
        .get_result::<TenantAndPrimary>(conn);
    found_with_primary(row, domain)
}

/// [`find_tenant_and_primary_by_domain`] on an async connection.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) async fn find_tenant_and_primary_by_domain_async(
    conn: &mut diesel_async::AsyncPgConnection,
    domain: &Domain,
) -> Result<Option<(Tenant, Option<Domain>)>> {
    let query =
        diesel::sql_query(TENANT_AND_PRIMARY).bind::<diesel::sql_types::Text, _>(domain.as_str());
    let row = diesel_async::RunQueryDsl::get_result::<TenantAndPrimary>(query, conn).await;
    found_with_primary(row, domain)
}

/// [`find_tenant_by_domain`] on an async connection (one query, no libpq).
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) async fn find_tenant_by_domain_async(
    conn: &mut diesel_async::AsyncPgConnection,
    domain: &Domain,
) -> Result<Option<Tenant>> {
    let query = tenancy_domains::table
        .inner_join(tenancy_tenants::table)
        .filter(tenancy_domains::domain.eq(domain.as_str()))
        .select(TenantRow::as_select())
        .limit(1);
    let row = diesel_async::RunQueryDsl::get_result(query, conn).await;
    found(row, format!("find tenant by domain {:?}", domain.as_str()))
}

/// A domain lookup's row, if any, as the tenant and its primary domain.
pub(super) fn found_with_primary(
    row: QueryResult<TenantAndPrimary>,
    domain: &Domain,
) -> Result<Option<(Tenant, Option<Domain>)>> {
    row.optional()
        .map_err(Error::db(format!(
            "find tenant by domain {:?}",
            domain.as_str()
        )))?
        .map(TenantAndPrimary::split)
        .transpose()
}
