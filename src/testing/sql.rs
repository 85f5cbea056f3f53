//! Connecting to a server and running statements on it, with errors that name
//! the server (never its credentials).

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::TestingError;
use super::error::db_err;

/// A connection to `url`, or an error naming the server.
pub(super) fn connect(url: &str) -> Result<PgConnection, TestingError> {
    PgConnection::establish(url).map_err(db_err(format!("connect to {}", node(url))))
}

/// `url`'s host, port and database, for messages (without its credentials).
pub(super) fn node(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "the server".into(),
        |u| {
            let (host, port) = (u.host_str().unwrap_or(""), u.port().unwrap_or(5432));
            format!("{host}:{port}{}", u.path())
        },
    )
}

/// Runs `statements` one by one on a connection of their own to `url`.
pub(super) fn execute(url: &str, statements: &[impl AsRef<str>]) -> Result<(), TestingError> {
    let mut conn = connect(url)?;
    for sql in statements {
        let sql = sql.as_ref();
        conn.batch_execute(sql)
            .map_err(db_err(format!("run `{sql}` on {}", node(url))))?;
    }
    Ok(())
}

/// `s` as an SQL string literal.
pub(super) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_leave_credentials_out() {
        assert_eq!(node("postgres://u:secret@h:5/db"), "h:5/db");
        assert_eq!(
            node("postgres://127.0.0.1/postgres"),
            "127.0.0.1:5432/postgres"
        );
    }
}
