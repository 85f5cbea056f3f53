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
///
/// The texts most recently proven harmless are remembered (the verdict is a
/// function of the text alone), so a statement sent again is not read again.
pub(crate) struct ScopeWatch {
    /// The connection's scope state.
    pub(crate) state: ConnState,
    /// The next statement comes from Diesel's transaction manager.
    transaction_statement: bool,
    /// The next statement is this crate's own (a checkout or reset statement),
    /// whose text is known and needs no classifying.
    own_statement: bool,
    /// Classify a statement when it finishes, from the text its end event
    /// carries, rather than when it starts (see [`classify_at_finish`](Self::classify_at_finish)).
    at_finish: bool,
    /// A statement started whose text is to be classified when it finishes.
    deferred: bool,
    buf: String,
    /// Texts proven harmless, most recent last.
    harmless: Vec<Box<str>>,
    inner: Option<Box<dyn Instrumentation>>,
}

/// How many harmless texts a connection remembers, and the longest one.
const HARMLESS_TEXTS: usize = 32;
const HARMLESS_TEXT_LEN: usize = 1024;

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
            at_finish: false,
            deferred: false,
            buf: String::new(),
            harmless: Vec::new(),
            inner,
        }
    }

    /// Classifies each statement when it finishes instead of when it starts:
    /// for diesel-async, whose start event carries the query itself (which
    /// must be rendered to SQL again to be read) and whose end event carries
    /// the SQL it sent. Sound because a statement that never finishes (its
    /// future dropped, or it failed before it was sent) leaves the connection
    /// with a statement in flight, which discards it; and when a statement
    /// starts while another waits to be classified (statements pipelined on
    /// one connection), the waiting one is not told apart at its end and
    /// counts as not proven harmless.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    #[cfg_attr(not(any(feature = "deadpool", feature = "bb8")), allow(dead_code))]
    pub(crate) fn classify_at_finish(mut self) -> Self {
        self.at_finish = true;
        self
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
        if std::mem::take(&mut self.deferred) {
            // A statement started and never finished: unknown.
            self.state.borrower_left_state();
        }
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
        let harmless = (complete || sink.done) && self.is_harmless();
        if !harmless {
            self.state.borrower_left_state();
        }
        if self.buf.capacity() > 64 * 1024 {
            self.buf = String::new();
        }
    }

    /// Whether the text in `buf` is proven harmless: remembered, or read by
    /// the lexer (and then remembered).
    fn is_harmless(&mut self) -> bool {
        let text = self.buf.as_str();
        if let Some(i) = self.harmless.iter().rposition(|h| **h == *text) {
            // Most recent last, so that the texts in use stay.
            let known = self.harmless.remove(i);
            self.harmless.push(known);
            return true;
        }
        if !super::is_harmless(text) {
            return false;
        }
        if text.len() <= HARMLESS_TEXT_LEN {
            if self.harmless.len() == HARMLESS_TEXTS {
                self.harmless.remove(0);
            }
            self.harmless.push(text.into());
        }
        true
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
                let from_transaction_manager = std::mem::take(&mut self.transaction_statement);
                let own = std::mem::take(&mut self.own_statement);
                if std::mem::take(&mut self.deferred) {
                    // Pipelined: the waiting statement's end cannot be told
                    // from this one's.
                    self.state.borrower_left_state();
                }
                if !from_transaction_manager && !own {
                    if self.at_finish && self.state.in_flight == 0 {
                        self.deferred = true;
                    } else {
                        self.classify(query);
                    }
                }
                self.state.in_flight += 1;
            }
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                if std::mem::take(&mut self.deferred) {
                    // No statement started since the deferred one, and none
                    // was in flight before it: this is its end.
                    self.classify(query);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Release, ScopeConfig};
    use diesel::connection::StrQueryHelper;

    fn start(w: &mut ScopeWatch, sql: &str) {
        w.on_connection_event(InstrumentationEvent::start_query(&StrQueryHelper::new(sql)));
    }

    fn finish(w: &mut ScopeWatch, sql: &str) {
        w.on_connection_event(InstrumentationEvent::finish_query(
            &StrQueryHelper::new(sql),
            None,
        ));
    }

    fn released(w: &mut ScopeWatch) -> Release {
        let cfg = ScopeConfig::new(
            Vec::new(),
            true,
            true,
            false,
            None,
            None,
            false,
            false,
            None,
        );
        w.clear_own_statement();
        w.state.release(&cfg, Some(false), false)
    }

    const HARMLESS: &str =
        "SELECT \"customers\".\"name\" FROM \"customers\" WHERE (\"customers\".\"id\" = $1)";
    const HARMFUL: &str = "SET search_path TO other";

    #[test]
    fn statements_are_classified_at_their_start_or_their_end() {
        for at_finish in [false, true] {
            let watch = || {
                let w = ScopeWatch::new(None);
                if at_finish { w.classify_at_finish() } else { w }
            };
            let mut w = watch();
            start(&mut w, HARMLESS);
            finish(&mut w, HARMLESS);
            assert_eq!(released(&mut w), Release::Keep, "at_finish {at_finish}");
            let mut w = watch();
            start(&mut w, HARMFUL);
            finish(&mut w, HARMFUL);
            assert_eq!(released(&mut w), Release::Reset, "at_finish {at_finish}");
            // Never finished: in flight, so discarded.
            let mut w = watch();
            start(&mut w, HARMLESS);
            assert_eq!(released(&mut w), Release::Discard, "at_finish {at_finish}");
        }
    }

    #[test]
    fn a_deferred_statement_overtaken_by_another_counts_as_harmful() {
        let mut w = ScopeWatch::new(None).classify_at_finish();
        start(&mut w, HARMLESS);
        start(&mut w, HARMLESS);
        finish(&mut w, HARMLESS);
        finish(&mut w, HARMLESS);
        assert_eq!(released(&mut w), Release::Reset);
        // Sequential statements are each read at their end.
        let mut w = ScopeWatch::new(None).classify_at_finish();
        for sql in [HARMLESS, HARMLESS, HARMFUL, HARMLESS] {
            start(&mut w, sql);
            finish(&mut w, sql);
        }
        assert_eq!(released(&mut w), Release::Reset);
    }

    #[test]
    fn only_harmless_texts_are_remembered() {
        let mut w = ScopeWatch::new(None);
        for _ in 0..3 {
            start(&mut w, HARMLESS);
            finish(&mut w, HARMLESS);
            assert_eq!(released(&mut w), Release::Keep);
            start(&mut w, HARMFUL);
            finish(&mut w, HARMFUL);
            assert_eq!(released(&mut w), Release::Reset);
        }
        assert_eq!(w.harmless.len(), 1);
        // A bounded number of texts, the most recent kept.
        for i in 0..2 * HARMLESS_TEXTS {
            let sql = format!("SELECT {i}");
            start(&mut w, &sql);
            finish(&mut w, &sql);
        }
        assert_eq!(w.harmless.len(), HARMLESS_TEXTS);
        assert_eq!(
            &*w.harmless[HARMLESS_TEXTS - 1],
            format!("SELECT {}", 2 * HARMLESS_TEXTS - 1)
        );
    }
}
