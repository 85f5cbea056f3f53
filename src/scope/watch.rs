//! The instrumentation installed on every pooled connection: it sees every
//! statement a borrower sends and records what it may have left behind.

use std::fmt::Write as _;

use diesel::connection::{Instrumentation, InstrumentationEvent};

use super::state::ConnState;

/// A Diesel [`Instrumentation`] installed on every pooled connection (sync and
/// async). It carries the connection's [`ConnState`], so the state travels
/// with the physical connection whatever pool holds it, and it classifies the
/// text of every statement a borrower sends with the lexer: a statement not
/// proven harmless marks the session for a reset when the borrow ends. Events
/// are passed on to the instrumentation Diesel would otherwise have used.
pub(crate) struct ScopeWatch {
    /// The connection's scope state.
    pub(crate) state: ConnState,
    /// The next statement comes from Diesel's transaction manager.
    transaction_statement: bool,
    /// The next statement is this crate's own (a checkout or reset statement),
    /// whose text is known and needs no classifying.
    own_statement: bool,
    buf: String,
    inner: Option<Box<dyn Instrumentation>>,
}

impl std::fmt::Debug for ScopeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeWatch")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ScopeWatch {
    pub(crate) fn new(inner: Option<Box<dyn Instrumentation>>) -> Self {
        ScopeWatch {
            state: ConnState::default(),
            transaction_statement: false,
            own_statement: false,
            buf: String::new(),
            inner,
        }
    }

    /// The next statement is the crate's own: it is counted and its errors are
    /// seen, but its text is not classified. Cleared by that statement's start
    /// (Diesel reports the start before it sends anything) and by
    /// [`clear_own_statement`](Self::clear_own_statement).
    pub(crate) fn own_statement_next(&mut self) {
        self.own_statement = true;
    }

    /// Forgets a mark left by a checkout that was cancelled (its future
    /// dropped) between marking and sending its statement, so that the mark
    /// cannot fall on a borrower's statement. Called as every checkout begins
    /// and as every borrow ends.
    pub(crate) fn clear_own_statement(&mut self) {
        self.own_statement = false;
    }

    fn classify(&mut self, query: &dyn std::fmt::Display) {
        self.buf.clear();
        let mut sink = SqlText {
            buf: &mut self.buf,
            done: false,
        };
        // Diesel displays a query as its SQL, then " -- binds: [...]"; the
        // binds are not needed, so the sink stops formatting when they begin.
        let complete = write!(sink, "{query}").is_ok();
        let harmless = (complete || sink.done) && super::is_harmless(&self.buf);
        if !harmless {
            self.state.borrower_left_state();
        }
        if self.buf.capacity() > 64 * 1024 {
            self.buf = String::new();
        }
    }
}

/// Collects a displayed Diesel query's SQL and refuses the rest: the bind
/// values follow the marker `" -- binds: "`, which Diesel writes on its own.
struct SqlText<'a> {
    buf: &'a mut String,
    done: bool,
}

impl std::fmt::Write for SqlText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.done || s == " -- binds: " {
            self.done = true;
            return Err(std::fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// The [`ScopeWatch`] of a connection's instrumentation, if it is still ours.
pub(crate) fn watch_of(instrumentation: &mut dyn Instrumentation) -> Option<&mut ScopeWatch> {
    instrumentation.downcast_mut::<ScopeWatch>()
}

impl Instrumentation for ScopeWatch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match &event {
            InstrumentationEvent::BeginTransaction { .. }
            | InstrumentationEvent::CommitTransaction { .. } => self.transaction_statement = true,
            InstrumentationEvent::RollbackTransaction { .. } => {
                self.transaction_statement = true;
                self.state.path_may_have_changed();
            }
            InstrumentationEvent::StartQuery { query, .. } => {
                self.state.in_flight += 1;
                let from_transaction_manager = std::mem::take(&mut self.transaction_statement);
                let own = std::mem::take(&mut self.own_statement);
                if !from_transaction_manager && !own {
                    self.classify(query);
                }
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                self.state.in_flight = self.state.in_flight.saturating_sub(1);
                if error.is_some() {
                    self.state.path_may_have_changed();
                }
            }
            _ => {}
        }
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}
