//! Running a migration one statement at a time, for Citus.
//!
//! Diesel sends a migration file as one multi-statement string. On a Citus
//! coordinator, some commands in a distributed schema (`CREATE INDEX` among
//! them) are forwarded to the worker with the original query string, which
//! still holds the other statements, and the worker refuses it ("cannot insert
//! multiple commands into a prepared statement"). So in Citus mode a migration
//! is first run against [`Capture`], a connection that only records the SQL a
//! migration sends; that SQL is split into statements by the crate's lexer and
//! sent one by one, still inside the caller's transaction.
//!
//! A migration that does anything but send SQL text (a Rust migration that
//! queries, say), or whose text the lexer cannot split, runs as it is.

use crate::conn::PgConn;
use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, Instrumentation,
    SimpleConnection, TransactionManager,
};
use diesel::migration::Migration;
use diesel::pg::Pg;
use diesel::query_builder::{QueryFragment, QueryId};
use diesel::{ConnectionResult, QueryResult};

use crate::scope::lexer::split_statements;

/// A connection that runs nothing: it records the text given to
/// `batch_execute` and fails every other statement.
#[derive(Default)]
struct Capture {
    texts: Vec<String>,
    transaction: AnsiTransactionManager,
    instrumentation: Option<Box<dyn Instrumentation>>,
}

fn refuse<T>() -> QueryResult<T> {
    Err(diesel::result::Error::QueryBuilderError(
        "only SQL text is captured".into(),
    ))
}

impl ConnectionSealed for Capture {}

impl SimpleConnection for Capture {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.texts.push(query.to_owned());
        Ok(())
    }
}

impl Connection for Capture {
    type Backend = Pg;
    type TransactionManager = AnsiTransactionManager;

    fn establish(_: &str) -> ConnectionResult<Self> {
        Ok(Capture::default())
    }

    fn execute_returning_count<T>(&mut self, _: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        refuse()
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <AnsiTransactionManager as TransactionManager<Self>>::TransactionStateData {
        &mut self.transaction
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut self.instrumentation
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.instrumentation = Some(Box::new(instrumentation));
    }

    fn set_prepared_statement_cache_size(&mut self, _: CacheSize) {}
}

/// The statements `m` sends, in order, or `None` when it does more than send
/// SQL text or its text cannot be split.
fn statements(m: &dyn Migration<Pg>) -> Option<Vec<String>> {
    let mut statements = Vec::new();
    for text in &captured(m)? {
        statements.extend(split_statements(text)?.into_iter().map(str::to_owned));
    }
    Some(statements)
}

/// The SQL texts `m` sends, unsplit, or `None` when it does more than send
/// SQL text.
pub(super) fn captured(m: &dyn Migration<Pg>) -> Option<Vec<String>> {
    let mut capture = Capture::default();
    m.run(&mut capture).ok()?;
    Some(capture.texts)
}

/// Runs `m` on `conn`, statement by statement when its SQL can be split.
pub(super) fn run_split(
    conn: &mut impl PgConn,
    m: &dyn Migration<Pg>,
) -> Result<(), super::MigrationError> {
    match statements(m) {
        Some(statements) => {
            for statement in statements {
                conn.batch_execute(&statement).map_err(|source| {
                    super::MigrationError::new(super::report::InStatement {
                        excerpt: excerpt(&statement),
                        source,
                    })
                })?;
            }
            Ok(())
        }
        None => m.run(conn).map_err(super::MigrationError::new),
    }
}

/// The start of a statement, for an error message.
fn excerpt(statement: &str) -> String {
    let line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::migration::MigrationSource;
    use diesel_migrations::FileBasedMigrations;

    #[test]
    fn captures_a_file_migration_statement_by_statement() {
        let dir = std::env::temp_dir().join(format!("dt-split-{}", std::process::id()));
        let m = dir.join("2025-01-01-000001_two");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("up.sql"),
            "CREATE TABLE a (x text DEFAULT ';');\n-- a comment; with a semicolon\nCREATE INDEX i ON a (x);\n",
        )
        .unwrap();
        std::fs::write(m.join("down.sql"), "DROP TABLE a;").unwrap();
        let source = FileBasedMigrations::from_path(&dir).unwrap();
        let migrations = MigrationSource::<Pg>::migrations(&source).unwrap();
        assert_eq!(migrations[0].name().version().to_string(), "20250101000001");
        assert_eq!(
            statements(&*migrations[0]).unwrap(),
            [
                "CREATE TABLE a (x text DEFAULT ';')",
                "-- a comment; with a semicolon\nCREATE INDEX i ON a (x)"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
