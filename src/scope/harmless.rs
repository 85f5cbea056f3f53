//! Whether SQL text a borrower sent provably leaves no session state behind.
//!
//! A pooled connection is lent to one tenant's code after another's. The pool
//! sees every round trip as SQL text and, when the borrow ends, reuses the
//! connection as is only if [`is_harmless`] held for all of it; otherwise it
//! runs its reset batch. This is a security boundary, so the classification
//! FAILS SAFE: a text is harmless only when every statement in it is proven
//! harmless by the rules below; anything not understood is "not harmless".
//! A false "not harmless" costs one round trip; a false "harmless" could leak
//! one tenant's session state (role, search path, temp tables, locks,
//! listeners, prepared statements, cursors, ...) to the next.
//!
//! # Statements
//!
//! A statement (empty ones included) is harmless when all of these hold:
//!
//! 1. It starts (after any opening parentheses) with `SELECT`, `INSERT`,
//!    `UPDATE`, `DELETE`, `WITH`, `VALUES`, `TABLE`, `MERGE` or `SHOW`, or it
//!    is `SET LOCAL ...`, `SET TRANSACTION ...` or `SET CONSTRAINTS ...`, which
//!    last at most until the end of the transaction. Everything else,
//!    `EXPLAIN` included (`EXPLAIN ANALYZE` runs its statement), is not.
//! 2. It nowhere contains the words `TEMP` or `TEMPORARY`, or an identifier
//!    starting with `pg_temp` (quoted or not, in any case), and `INTO` appears
//!    only right after the verb `INSERT` or `MERGE` (`SELECT ... INTO` creates
//!    a table).
//! 3. Every function call in it is to an allow-listed builtin without session
//!    effects ([`FUNCTIONS`]), unqualified or qualified by `pg_catalog`. A call
//!    is a name (quoted or not, maybe qualified) followed by `(`, except where
//!    the grammar proves otherwise: keywords that cannot name a function
//!    ([`NOT_CALLABLE`]), type modifiers after `::` or `AS`, column lists
//!    after `INSERT INTO t`, an alias (`AS t (a)`, `f() t (a)`) or a CTE name,
//!    and a few keyword pairs (`GROUP BY (`, `ON CONFLICT (...) DO`, ...).
//!    Anything else followed by `(` is treated as a call. `U&"..."`
//!    identifiers are never decoded and never harmless.
//!
//! The rules read text only. Objects the text names (triggers, column
//! defaults, views, user-defined operators and casts, functions called through
//! attribute notation `t.f`) belong to the schema, which migrations create;
//! they are trusted, as is the search path the pool sets.

use super::lexer::{Lexer, Tok, ci, is_kw, is_pg_temp, listed};

/// Whether every statement in `sql` is proven to leave no session state behind.
///
/// See the [module documentation](self) for the rules. Any doubt yields
/// `false`: the caller then resets the connection.
pub(crate) fn is_harmless(sql: &str) -> bool {
    !sql.contains('\0') && classify(sql, false) && (!sql.contains('\\') || classify(sql, true))
}

/// Statement verbs that start a harmless statement (lowercase, sorted).
#[rustfmt::skip]
const VERBS: &[&str] = &[
    "delete", "insert", "merge", "select", "show", "table", "update", "values", "with",
];

/// Grammar words that cannot name a function when followed by `(`: reserved
/// and column-name keywords (PostgreSQL refuses them as unqualified function
/// names; their special forms call only `pg_catalog` builtins). This is a list
/// of grammar words, not of dangers. `TREAT` is deliberately absent: its
/// special form calls the `pg_catalog` function named by its type argument.
#[rustfmt::skip]
const NOT_CALLABLE: &[&str] = &[
    "all", "and", "any", "array", "as", "asymmetric", "between", "bit", "both", "case", "cast",
    "char", "character", "coalesce", "current_time", "current_timestamp", "dec", "decimal",
    "distinct", "do", "else", "end", "except", "exists", "extract", "float", "for", "from",
    "greatest", "group", "grouping", "having", "in", "intersect", "interval", "into", "lateral",
    "leading", "least", "limit", "localtime", "localtimestamp", "nchar", "not", "nullif",
    "numeric", "offset", "on", "only", "or", "overlay", "placing", "position", "returning", "row",
    "select", "some", "substring", "symmetric", "then", "time", "timestamp", "to", "trailing",
    "trim", "union", "using", "values", "varchar", "variadic", "when", "where", "with",
];

/// Builtin functions without session-level side effects that applications
/// commonly call (lowercase, sorted). Deliberately absent, among others:
/// `set_config`, `pg_advisory_*`, `nextval`, `setval`, `currval`, `lastval`,
/// `setseed`, `dblink*`, `lo_*`, `pg_notify`, `pg_sleep*`, `txid_*` and every
/// other `pg_*` function but `pg_typeof`.
#[rustfmt::skip]
const FUNCTIONS: &[&str] = &[
    "abs", "age", "array_agg", "array_append", "array_cat", "array_dims", "array_length",
    "array_lower", "array_position", "array_prepend", "array_remove", "array_replace",
    "array_to_string", "array_upper", "avg", "bit_and", "bit_or", "bool_and", "bool_or", "btrim",
    "cardinality", "ceil", "ceiling", "char_length", "character_length", "clock_timestamp",
    "concat", "concat_ws", "count", "cume_dist", "current_schema", "current_setting",
    "current_user", "date", "date_part", "date_trunc", "decode", "dense_rank", "encode", "every",
    "exp", "first_value", "floor", "format", "gen_random_uuid", "generate_series", "initcap",
    "json_agg", "json_array_elements", "json_array_length", "json_build_array",
    "json_build_object", "json_each", "json_extract_path", "json_extract_path_text",
    "json_object_agg", "json_strip_nulls", "json_typeof", "jsonb_agg", "jsonb_array_elements",
    "jsonb_array_length", "jsonb_build_array", "jsonb_build_object", "jsonb_each",
    "jsonb_each_text", "jsonb_extract_path", "jsonb_extract_path_text", "jsonb_insert",
    "jsonb_object_agg", "jsonb_path_exists", "jsonb_path_query", "jsonb_pretty", "jsonb_set",
    "jsonb_strip_nulls", "jsonb_typeof", "justify_days", "justify_hours", "lag", "last_value",
    "lead", "left", "length", "ln", "log", "lower", "lpad", "ltrim", "make_date", "make_interval",
    "make_timestamp", "make_timestamptz", "max", "md5", "min", "mod", "mode", "now", "nth_value",
    "ntile", "octet_length", "percent_rank", "percentile_cont", "percentile_disc", "pg_typeof",
    "power", "quote_ident", "quote_literal", "quote_nullable", "random", "rank", "regexp_match",
    "regexp_matches", "regexp_replace", "regexp_split_to_array", "repeat", "replace", "reverse",
    "right", "round", "row_number", "row_to_json", "rpad", "rtrim", "session_user", "sign",
    "split_part", "sqrt", "starts_with", "statement_timestamp", "stddev", "stddev_pop",
    "stddev_samp", "string_agg", "string_to_array", "strpos", "substr", "sum", "to_char",
    "to_date", "to_hex", "to_json", "to_jsonb", "to_number", "to_timestamp",
    "transaction_timestamp", "translate", "trunc", "unnest", "upper", "var_pop", "var_samp",
    "variance", "version",
];

/// How the start of a statement has been read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// Nothing but opening parentheses yet.
    Start,
    /// `SET`, awaiting `LOCAL`, `TRANSACTION` or `CONSTRAINTS`.
    Set,
    /// A harmless start; the rest is checked token by token.
    Ok,
}

/// Where in a `WITH` list the statement is; the `u32` is the paren depth of
/// the list. Only one list is tracked: a nested `WITH` replaces the outer one,
/// whose later CTE column lists then read as calls (fail safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cte {
    /// Not in a `WITH` list.
    None,
    /// After `WITH`, `RECURSIVE` or `,`: a CTE name comes.
    Name(u32),
    /// After the name: `(` opens a column list, or `AS` comes.
    AfterName(u32),
    /// Inside the column list.
    Columns(u32),
    /// After the column list: `AS` comes.
    AfterColumns(u32),
    /// After `AS` (and `[NOT] MATERIALIZED`): `(` opens the body.
    AfterAs(u32),
    /// Inside the body.
    Body(u32),
    /// After the body: `,` continues the list, anything else is the verb.
    AfterBody(u32),
}

/// The word that must follow a parenthesis once it closes, for a `name (`
/// exempted on that condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `ON CONFLICT (target) DO`.
    Do,
    /// `THEN INSERT (columns) VALUES | OVERRIDING` in `MERGE`.
    Values,
}

/// The state of the statement being read.
#[derive(Debug)]
struct Statement<'a> {
    /// The last four tokens, most recent first (`Semi` before the start).
    hist: [Tok<'a>; 4],
    /// How the statement starts.
    lead: Lead,
    /// Open parentheses.
    depth: u32,
    /// The `WITH` list state.
    cte: Cte,
    /// Whether the next token is in verb position (statement or CTE body start).
    verb_next: bool,
    /// Whether the last token was the verb `INSERT` or `MERGE` (`INTO` may follow).
    insert_verb: bool,
    /// The statement writes (`INSERT`, `UPDATE`, `DELETE`, `MERGE`): a `pg_`
    /// name in it may be a system view with a rule that calls a function
    /// (`UPDATE pg_settings` calls `set_config`), so none is allowed.
    writes: bool,
    /// Tokens since the verb `UPDATE` in an unbroken `[ONLY] t[.t] [AS] [a]` chain.
    update_chain: u8,
    /// Whether the last token was the `SET` of `UPDATE ... SET` (`SET (` is a column list).
    set_armed: bool,
    /// A parenthesis exempted on condition: its depth and what must follow it.
    pending: Option<(u32, Expect)>,
    /// The condition the next token must meet.
    expect_now: Option<Expect>,
}

impl<'a> Statement<'a> {
    /// A statement with nothing read yet.
    fn new() -> Self {
        Statement {
            hist: [Tok::Semi; 4],
            lead: Lead::Start,
            depth: 0,
            cte: Cte::None,
            verb_next: true,
            insert_verb: false,
            writes: false,
            update_chain: 0,
            set_armed: false,
            pending: None,
            expect_now: None,
        }
    }

    /// Records `t` as the latest token.
    fn push(&mut self, t: Tok<'a>) {
        self.hist = [t, self.hist[0], self.hist[1], self.hist[2]];
    }

    /// Whether the statement, now complete, is harmless.
    fn finish(&self) -> bool {
        match self.lead {
            Lead::Start => self.depth == 0,
            Lead::Set => false,
            Lead::Ok => self.depth == 0 && self.pending.is_none() && self.expect_now.is_none(),
        }
    }

    /// Reads one token (never `Semi`); `false` as soon as the statement is
    /// not provably harmless.
    ///
    /// Long on purpose: one match over the statement's state and the token is
    /// the grammar the module documentation lists, rule by rule, and reads as
    /// one table; split into helpers, each rule's exceptions would be spread
    /// over several functions.
    fn feed(&mut self, t: Tok<'a>) -> bool {
        if let Some(e) = self.expect_now.take() {
            let ok = match e {
                Expect::Do => is_kw(t, "do"),
                Expect::Values => is_kw(t, "values") || is_kw(t, "overriding"),
            };
            if !ok {
                return false;
            }
        }
        match (self.lead, t) {
            (Lead::Start, Tok::Open) => {
                self.depth += 1;
                self.push(t);
                return true;
            }
            (Lead::Start, Tok::Word(w)) if ci(w, "set") && self.depth == 0 => {
                self.lead = Lead::Set;
                self.push(t);
                return true;
            }
            (Lead::Start, Tok::Word(w)) if listed(VERBS, w, true) => self.lead = Lead::Ok,
            (Lead::Set, Tok::Word(w))
                if ci(w, "local") || ci(w, "transaction") || ci(w, "constraints") =>
            {
                self.lead = Lead::Ok;
                self.verb_next = false;
            }
            (Lead::Start | Lead::Set, _) => return false,
            (Lead::Ok, _) => {}
        }
        let is_verb = std::mem::replace(&mut self.verb_next, false);
        match t {
            Tok::Word(w) => {
                if ci(w, "temp") || ci(w, "temporary") || is_pg_temp(w) {
                    return false;
                }
                if self.writes && w.get(..3).is_some_and(|p| ci(p, "pg_")) {
                    return false;
                }
                if ci(w, "into") && !self.insert_verb {
                    return false;
                }
            }
            Tok::Quoted(q) if is_pg_temp(q) || (self.writes && q.starts_with("pg_")) => {
                return false;
            }
            Tok::UnicodeIdent | Tok::Bad | Tok::Semi => return false,
            Tok::Open => {
                let mut exempt = self.set_armed;
                self.cte = match self.cte {
                    Cte::AfterName(d) if d == self.depth => {
                        exempt = true;
                        Cte::Columns(d)
                    }
                    Cte::AfterAs(d) if d == self.depth => {
                        exempt = true;
                        self.verb_next = true;
                        Cte::Body(d)
                    }
                    s @ (Cte::Columns(_) | Cte::Body(_)) => s,
                    _ => Cte::None,
                };
                if !exempt && !self.call_allowed() {
                    return false;
                }
                self.depth += 1;
            }
            Tok::Close => {
                let Some(depth) = self.depth.checked_sub(1) else {
                    return false;
                };
                self.depth = depth;
                if let Some((d, e)) = self.pending {
                    if d == depth {
                        self.pending = None;
                        self.expect_now = Some(e);
                    }
                }
                self.cte = match self.cte {
                    Cte::Columns(d) if d == depth => Cte::AfterColumns(d),
                    Cte::Body(d) if d == depth => {
                        self.verb_next = true;
                        Cte::AfterBody(d)
                    }
                    s @ (Cte::Columns(_) | Cte::Body(_)) => s,
                    _ => Cte::None,
                };
            }
            _ => {}
        }
        if !matches!(t, Tok::Open | Tok::Close) {
            self.cte = match (self.cte, t) {
                (_, Tok::Word(w)) if ci(w, "with") => Cte::Name(self.depth),
                (Cte::Name(d), Tok::Word(w)) if ci(w, "recursive") => Cte::Name(d),
                (Cte::Name(d), Tok::Word(_) | Tok::Quoted(_)) => Cte::AfterName(d),
                (Cte::AfterName(d) | Cte::AfterColumns(d), Tok::Word(w)) if ci(w, "as") => {
                    Cte::AfterAs(d)
                }
                (Cte::AfterAs(d), Tok::Word(w)) if ci(w, "not") || ci(w, "materialized") => {
                    Cte::AfterAs(d)
                }
                (Cte::AfterBody(d), Tok::Comma) => Cte::Name(d),
                (s @ (Cte::Columns(_) | Cte::Body(_)), _) => s,
                _ => Cte::None,
            };
        }
        let is_set = is_kw(t, "set");
        self.insert_verb = is_verb && (is_kw(t, "insert") || is_kw(t, "merge"));
        if is_verb && (self.insert_verb || is_kw(t, "update") || is_kw(t, "delete")) {
            self.writes = true;
        }
        self.set_armed = is_set
            && (self.update_chain > 0
                || (is_kw(self.hist[0], "update")
                    && (is_kw(self.hist[1], "do") || is_kw(self.hist[1], "then"))));
        self.update_chain = if is_verb && is_kw(t, "update") {
            1
        } else if (1..8).contains(&self.update_chain)
            && !is_set
            && matches!(t, Tok::Word(_) | Tok::Quoted(_) | Tok::Dot)
        {
            self.update_chain + 1
        } else {
            0
        };
        self.push(t);
        true
    }

    /// Whether the `(` now read, after `self.hist`, is no call or a call to
    /// an allowed function.
    fn call_allowed(&mut self) -> bool {
        let [n, p, pp, ppp] = self.hist;
        let (name, fold) = match n {
            Tok::Word(w) => (w, true),
            Tok::Quoted(q) => (q, false),
            _ => return true,
        };
        let type_or_table = |t: Tok<'_>| t == Tok::Cast || is_kw(t, "as") || is_kw(t, "into");
        if p == Tok::Dot {
            if type_or_table(ppp) {
                return true;
            }
            let catalog = match pp {
                Tok::Word(q) => ci(q, "pg_catalog"),
                Tok::Quoted(q) => q == "pg_catalog",
                _ => false,
            };
            return catalog && ppp != Tok::Dot && listed(FUNCTIONS, name, fold);
        }
        if p == Tok::Close || type_or_table(p) {
            return true;
        }
        if fold && (listed(NOT_CALLABLE, name, true) || self.grammar_pair(name, p, pp)) {
            return true;
        }
        listed(FUNCTIONS, name, fold)
    }

    /// Whether the unquoted `w (`, after `p` and `pp`, is grammar, not a call.
    fn grammar_pair(&mut self, w: &str, p: Tok<'a>, pp: Tok<'a>) -> bool {
        let after = |kw: &str| is_kw(p, kw);
        let operand = |t: Tok<'_>| matches!(t, Tok::Quoted(_) | Tok::Close | Tok::Literal);
        if ci(w, "by") {
            after("group") || after("order") || after("partition")
        } else if ci(w, "sets") {
            after("grouping")
        } else if ci(w, "cube") || ci(w, "rollup") {
            after("by") && is_kw(pp, "group")
        } else if ci(w, "join") {
            [
                "left", "right", "full", "inner", "cross", "outer", "natural",
            ]
            .into_iter()
            .any(after)
        } else if ci(w, "varying") {
            ["character", "char", "bit", "nchar"].into_iter().any(after)
        } else if ci(w, "like") || ci(w, "ilike") {
            operand(p) || (after("not") && operand(pp))
        } else if after("tablesample") {
            true
        } else if ci(w, "conflict") && after("on") {
            self.defer(Expect::Do)
        } else if ci(w, "insert") && after("then") {
            self.defer(Expect::Values)
        } else {
            false
        }
    }

    /// Exempts the `(` being read on condition `e` (one at a time).
    fn defer(&mut self, e: Expect) -> bool {
        let free = self.pending.is_none();
        if free {
            self.pending = Some((self.depth, e));
        }
        free
    }
}

/// Classifies `sql` under one reading of `'...'` strings.
fn classify(sql: &str, backslash_quotes: bool) -> bool {
    let mut lexer = Lexer {
        src: sql,
        pos: 0,
        backslash_quotes,
    };
    let mut statement = Statement::new();
    while let Some(t) = lexer.next_token() {
        if t == Tok::Semi {
            if !statement.finish() {
                return false;
            }
            statement = Statement::new();
        } else if !statement.feed(t) {
            return false;
        }
    }
    statement.finish()
}

#[cfg(test)]
mod tests;
