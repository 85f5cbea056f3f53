//! The tenant tutorial: one axum app, one database, a schema per tenant.
//!
//! ```text
//! cargo run --example tenant_tutorial
//! ```
//!
//! - `http://localhost:8000/`: the public site. Lists tenants and signs new ones up.
//! - `http://<tenant>.localhost:8000/`: that tenant's site, with its own products.
//! - any other `*.localhost` host: a 404 page.
//!
//! With `DATABASE_URL` unset it starts a throwaway PostgreSQL cluster; `PORT`
//! sets the port (default 8000).
#![allow(missing_docs)]

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::extract::{Form, Query};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Router, extract::State};
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::web::axum::{CurrentTenant, TenancyLayer, TenantDb, tenant_routing};
use diesel_tenancy::{
    Domain, Error, IpHosts, MigrateOptions, Migrator, NewTenant, Resolver, SchemaName, TenantPool,
    create_tenant, registry,
};

const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");

diesel::table! {
    products (id) {
        id -> BigInt,
        name -> Text,
        price_cents -> Integer,
    }
}

#[derive(Clone)]
struct App {
    pool: TenantPool,
    port: u16,
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}\
         .error{{color:#a00}} .ok{{color:#070}} input{{margin:.2em}}</style></head>\
         <body>{body}</body></html>",
        title = escape_html(title)
    ))
}

#[derive(serde::Deserialize, Default)]
struct Created {
    created: Option<String>,
}

async fn public_home(State(app): State<App>, Query(q): Query<Created>) -> Response {
    public_page(&app, q.created.as_deref(), None, "", "").await
}

async fn public_page(
    app: &App,
    created: Option<&str>,
    error: Option<&str>,
    name: &str,
    subdomain: &str,
) -> Response {
    let pool = app.pool.clone();
    let tenants = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let mut conn = pool.public()?;
        let mut out = Vec::new();
        for t in registry::list_tenants(&mut conn)? {
            let domain = registry::list_domains(&mut conn, &t)?
                .into_iter()
                .next()
                .map(|d| d.domain.to_string());
            out.push((t.name().to_owned(), t.schema().to_string(), domain));
        }
        Ok(out)
    })
    .await;
    let tenants = match tenants {
        Ok(Ok(t)) => t,
        _ => return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response(),
    };
    let mut body = String::from(
        "<h1>Tenant tutorial</h1><p>The public site, served from the <code>public</code> schema.</p>",
    );
    if let Some(created) = created {
        body += &format!(
            "<p class=\"ok\" id=\"created\">Created {0}: open <a href=\"http://{0}.localhost:{1}/\">http://{0}.localhost:{1}/</a></p>",
            escape_html(created),
            app.port
        );
    }
    body += "<h2>Tenants</h2><ul id=\"tenants\">";
    for (name, schema, domain) in &tenants {
        let link = domain.as_deref().map_or(String::new(), |d| {
            format!(
                " <a href=\"http://{0}:{1}/\">http://{0}:{1}/</a>",
                escape_html(d),
                app.port
            )
        });
        body += &format!(
            "<li>{} (schema <code>{}</code>){link}</li>",
            escape_html(name),
            escape_html(schema)
        );
    }
    body += "</ul><h2>Sign up</h2>";
    if let Some(error) = error {
        body += &format!("<p class=\"error\" id=\"error\">{}</p>", escape_html(error));
    }
    body += &format!(
        "<form method=\"post\" action=\"/signup\">\
         <label>Name <input name=\"name\" id=\"name\" value=\"{}\"></label><br>\
         <label>Subdomain <input name=\"subdomain\" id=\"subdomain\" value=\"{}\">.localhost</label><br>\
         <button type=\"submit\" id=\"signup\">Create tenant</button></form>",
        escape_html(name),
        escape_html(subdomain)
    );
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, page("Tenant tutorial", &body)).into_response()
}

#[derive(serde::Deserialize)]
struct Signup {
    name: String,
    subdomain: String,
}

async fn signup(State(app): State<App>, Form(form): Form<Signup>) -> Response {
    let name = form.name.trim().to_owned();
    let subdomain = form.subdomain.trim().to_owned();
    let checked = (|| -> Result<NewTenant, String> {
        if name.is_empty() || name.chars().count() > 100 {
            return Err("The name must have 1 to 100 characters.".into());
        }
        let schema = SchemaName::new(&subdomain).map_err(|e| {
            format!("{e}. Use lowercase letters, digits and '_', starting with a letter.")
        })?;
        let domain = Domain::parse(&format!("{subdomain}.localhost")).map_err(|e| e.to_string())?;
        Ok(NewTenant::new(schema, name.clone()).domain(domain))
    })();
    let new = match checked {
        Ok(new) => new,
        Err(error) => return public_page(&app, None, Some(&error), &name, &subdomain).await,
    };
    let pool = app.pool.clone();
    let created =
        tokio::task::spawn_blocking(move || create_tenant(&mut *pool.public()?, &new, TENANT))
            .await;
    match created {
        Ok(Ok(tenant)) => Redirect::to(&format!("/?created={}", tenant.schema())).into_response(),
        Ok(Err(Error::TenantExists { schema })) => {
            let error = format!("The name {schema:?} is taken.");
            public_page(&app, None, Some(&error), &name, &subdomain).await
        }
        Ok(Err(Error::DomainTaken { domain })) => {
            let error = format!("The domain {domain} is taken.");
            public_page(&app, None, Some(&error), &name, &subdomain).await
        }
        Ok(Err(Error::SchemaExists { schema })) => {
            let error = format!("The name {schema:?} is reserved.");
            public_page(&app, None, Some(&error), &name, &subdomain).await
        }
        Ok(Err(e)) => {
            tracing_error(&e);
            public_page(
                &app,
                None,
                Some("The tenant could not be created."),
                &name,
                &subdomain,
            )
            .await
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sign-up failed").into_response(),
    }
}

fn tracing_error(e: &Error) {
    eprintln!("error: {e}");
}

async fn tenant_home(CurrentTenant(tenant): CurrentTenant, db: TenantDb) -> Response {
    tenant_page(&tenant, &db, None).await
}

async fn tenant_page(
    tenant: &diesel_tenancy::Tenant,
    db: &TenantDb,
    error: Option<&str>,
) -> Response {
    let rows = db
        .run(|conn| {
            products::table
                .select((products::name, products::price_cents))
                .order(products::id)
                .load::<(String, i32)>(conn)
        })
        .await;
    let rows = match rows {
        Ok(Ok(rows)) => rows,
        _ => return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response(),
    };
    let mut body = format!(
        "<h1 id=\"tenant\">{}</h1><p>This site is served from schema <code>{}</code>; \
         it sees only its own products.</p><h2>Products</h2><ul id=\"products\">",
        escape_html(tenant.name()),
        escape_html(tenant.schema().as_str())
    );
    for (name, cents) in &rows {
        body += &format!(
            "<li>{} &mdash; {}.{:02}</li>",
            escape_html(name),
            cents / 100,
            cents % 100
        );
    }
    if rows.is_empty() {
        body += "<li><em>none yet</em></li>";
    }
    body += "</ul>";
    if let Some(error) = error {
        body += &format!("<p class=\"error\" id=\"error\">{}</p>", escape_html(error));
    }
    body += "<form method=\"post\" action=\"/products\">\
             <label>Product <input name=\"name\" id=\"product\"></label> \
             <label>Price (cents) <input name=\"price_cents\" id=\"price\" value=\"100\"></label> \
             <button type=\"submit\" id=\"add\">Add</button></form>";
    page(tenant.name(), &body).into_response()
}

#[derive(serde::Deserialize)]
struct NewProduct {
    name: String,
    price_cents: String,
}

async fn add_product(
    CurrentTenant(tenant): CurrentTenant,
    db: TenantDb,
    Form(form): Form<NewProduct>,
) -> Response {
    let name = form.name.trim().to_owned();
    let price = form
        .price_cents
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p >= 0);
    let (false, Some(price)) = (name.is_empty() || name.chars().count() > 100, price) else {
        return tenant_page(
            &tenant,
            &db,
            Some("A product needs a name (1 to 100 characters) and a price in cents."),
        )
        .await;
    };
    let inserted = db
        .run(move |conn| {
            diesel::insert_into(products::table)
                .values((products::name.eq(name), products::price_cents.eq(price)))
                .execute(conn)
        })
        .await;
    match inserted {
        Ok(Ok(_)) => Redirect::to("/").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response(),
    }
}

fn suspended(tenant: &diesel_tenancy::Tenant, _host: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        page(
            "Suspended",
            &format!(
                "<h1 id=\"suspended\">{} is suspended</h1><p>This site is not served at the \
                 moment. Its data is kept; it comes back when the tenant is activated.</p>",
                escape_html(tenant.name())
            ),
        ),
    )
        .into_response()
}

fn not_found(host: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page(
            "Not found",
            &format!(
                "<h1 id=\"not-found\">404: no tenant here</h1><p>No tenant is served at <code>{}</code>. \
                 <a href=\"http://localhost:{}/\">Go to the public site</a> to sign one up.</p>",
                escape_html(host),
                std::env::var("PORT").unwrap_or_else(|_| "8000".into())
            ),
        ),
    )
        .into_response()
}

fn demo_tenant(pool: &TenantPool, schema: &str, name: &str) -> Result<()> {
    let new = NewTenant::new(SchemaName::new(schema)?, name)
        .domain(Domain::parse(&format!("{schema}.localhost"))?);
    match create_tenant(&mut *pool.public()?, &new, TENANT) {
        Ok(_) | Err(Error::TenantExists { .. }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating demo tenant {schema}")),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().context("PORT must be a port number")?,
        Err(_) => 8000,
    };
    let (_throwaway, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster");
            let db = TestDatabase::new()?;
            let url = db.url().to_owned();
            (Some(db), url)
        }
    };
    let pool = TenantPool::builder(url).max_size(8).build()?;
    let report = Migrator::new(SHARED, TENANT).migrate_all(&pool, &MigrateOptions::new())?;
    report.into_result()?;
    demo_tenant(&pool, "acme", "Acme Corp")?;
    demo_tenant(&pool, "globex", "Globex Inc")?;

    let resolver = Resolver::builder(pool.clone())
        .public_domain(Domain::parse("localhost")?)
        .ip_hosts(IpHosts::Public)
        .build()?;
    let _listener = resolver.listen()?;
    let app = App { pool, port };
    let public = Router::new()
        .route("/", get(public_home))
        .route("/signup", axum::routing::post(signup))
        .with_state(app);
    let tenant = Router::new()
        .route("/", get(tenant_home))
        .route("/products", axum::routing::post(add_product));
    let router = tenant_routing(
        public,
        tenant,
        TenancyLayer::new(resolver)
            .not_found_page(not_found)
            .suspended_page(suspended),
    );

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("The public site:        http://localhost:{port}/");
    println!("Demo tenant Acme Corp:  http://acme.localhost:{port}/");
    println!("Demo tenant Globex Inc: http://globex.localhost:{port}/");
    println!("Unknown tenants get a 404, e.g. http://nobody.localhost:{port}/");
    println!("listening on {addr}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Escapes text for HTML (an application would use its template engine).
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
