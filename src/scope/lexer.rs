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
//! # Lexing
//!
//! The text is tokenised with PostgreSQL's lexical rules: whitespace, `--`
//! comments (to `\n` or `\r`), nesting `/* */` comments, identifiers (letters,
//! non-ASCII bytes, `_`, then also digits and `$`), `"quoted"` identifiers,
//! `U&"..."` identifiers, `'...'`, `E'...'`, `U&'...'`, `B'...'`, `X'...'` and
//! `N'...'` strings (including continuation across a newline, which keeps the
//! first part's escape rules), `$tag$...$tag$` strings, numbers, `$n`
//! parameters and operators. `;` outside those separates statements. Text that
//! cannot be tokenised (an unterminated string, comment, quoted identifier or
//! dollar quote, a NUL byte, a stray `\`, `{` or control character) makes the
//! whole text not harmless.
//!
//! Whether a backslash escapes a quote in `'...'` depends on the server's
//! `standard_conforming_strings`. A text containing a backslash is therefore
//! classified under both readings and must be harmless under each. The client
//! encoding is taken to be UTF-8 (Diesel sets it; changing it takes a `SET`).
//!
//! Where this lexer accepts text PostgreSQL rejects, nothing is lost: a simple
//! query is parsed whole before any of it runs, so text with a syntax error
//! anywhere runs nothing. What matters is that every text PostgreSQL accepts
//! is split into strings, comments and statements exactly as PostgreSQL does.
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

/// One token; comments and whitespace are skipped, literal contents dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a str),
    /// A quoted identifier's text between its quotes (`""` left doubled).
    Quoted(&'a str),
    /// A `U&"..."` identifier, never decoded.
    UnicodeIdent,
    /// A string of any kind, a dollar-quoted string, a number or a parameter.
    Literal,
    /// `(`.
    Open,
    /// `)`.
    Close,
    /// `.`.
    Dot,
    /// `,`.
    Comma,
    /// `;`, the statement separator.
    Semi,
    /// `::`.
    Cast,
    /// Any other operator or punctuation character.
    Op,
    /// Text that cannot be tokenised.
    Bad,
}

/// A PostgreSQL lexer over one text, yielding [`Tok`]s without allocating.
#[derive(Debug)]
struct Lexer<'a> {
    /// The text.
    src: &'a str,
    /// The byte offset of the next unread character.
    pos: usize,
    /// Whether `'...'` strings take backslash escapes
    /// (`standard_conforming_strings = off`).
    backslash_quotes: bool,
}

/// Whether `c` may start an identifier (non-ASCII bytes may, as in PostgreSQL).
fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// Whether `c` may continue a dollar-quote tag.
fn tag_char(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit()
}

/// Whether `c` is PostgreSQL whitespace.
fn space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

impl<'a> Lexer<'a> {
    /// The next token, or `None` at the end of the text.
    fn next_token(&mut self) -> Option<Tok<'a>> {
        let b = self.src.as_bytes();
        loop {
            let c = *b.get(self.pos)?;
            let next = b.get(self.pos + 1).copied();
            if space(c) {
                self.pos += 1;
            } else if c == b'-' && next == Some(b'-') {
                self.skip_line_comment();
            } else if c == b'/' && next == Some(b'*') {
                if !self.skip_block_comment() {
                    return Some(Tok::Bad);
                }
            } else {
                break;
            }
        }
        let start = self.pos;
        let c = b[start];
        let next = b.get(start + 1).copied();
        self.pos += 1;
        Some(match c {
            b'(' => Tok::Open,
            b')' => Tok::Close,
            b',' => Tok::Comma,
            b';' => Tok::Semi,
            b':' if next == Some(b':') => {
                self.pos += 1;
                Tok::Cast
            }
            b'.' if !next.is_some_and(|n| n.is_ascii_digit()) => Tok::Dot,
            b'.' | b'0'..=b'9' => self.number(c == b'.'),
            b'\'' => self.string(self.backslash_quotes),
            b'"' => self.quoted_ident(),
            b'$' => self.dollar(start),
            _ if ident_start(c) => self.word(start),
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
            | b'^' | b'&' | b'|' | b'`' | b'?' | b'[' | b']' | b':' => Tok::Op,
            _ => Tok::Bad,
        })
    }

    /// Skips a `--` comment up to (not including) the next newline.
    fn skip_line_comment(&mut self) {
        let rest = &self.src.as_bytes()[self.pos..];
        self.pos += rest
            .iter()
            .position(|&c| c == b'\n' || c == b'\r')
            .unwrap_or(rest.len());
    }

    /// Skips a `/* */` comment, which nests; `false` if it is unterminated.
    fn skip_block_comment(&mut self) -> bool {
        let b = self.src.as_bytes();
        let mut depth = 0usize;
        let mut i = self.pos;
        while i + 1 < b.len() {
            match (b[i], b[i + 1]) {
                (b'/', b'*') => depth += 1,
                (b'*', b'/') => depth -= 1,
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
            if depth == 0 {
                self.pos = i;
                return true;
            }
        }
        false
    }

    /// Reads the rest of a number (digits, a fraction, an exponent). What
    /// follows it (PostgreSQL 15+ rejects `1abc`) is lexed as a new token.
    fn number(&mut self, started_with_dot: bool) -> Tok<'a> {
        let b = self.src.as_bytes();
        let digits = |i: &mut usize| {
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
        };
        let mut i = self.pos;
        digits(&mut i);
        if !started_with_dot && b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
                i += 1 + sign;
                digits(&mut i);
            }
        }
        self.pos = i;
        Tok::Literal
    }

    /// Reads a string after its opening quote; `backslash`: whether `\`
    /// escapes the next character. A following quote after whitespace holding
    /// a newline (and `--` comments) continues the string with the same rules.
    fn string(&mut self, backslash: bool) -> Tok<'a> {
        let b = self.src.as_bytes();
        while let Some(&c) = b.get(self.pos) {
            self.pos += 1;
            if c == b'\\' && backslash {
                self.pos += 1;
            } else if c == b'\'' {
                if b.get(self.pos) == Some(&b'\'') {
                    self.pos += 1;
                    continue;
                }
                let (mut i, mut newline) = (self.pos, false);
                loop {
                    match b.get(i) {
                        Some(&c) if space(c) => {
                            newline |= c == b'\n' || c == b'\r';
                            i += 1;
                        }
                        Some(b'-') if b.get(i + 1) == Some(&b'-') => {
                            while b.get(i).is_some_and(|&c| c != b'\n' && c != b'\r') {
                                i += 1;
                            }
                        }
                        _ => break,
                    }
                }
                if !(newline && b.get(i) == Some(&b'\'')) {
                    return Tok::Literal;
                }
                self.pos = i + 1;
            }
        }
        Tok::Bad
    }

    /// Reads a quoted identifier after its opening quote.
    fn quoted_ident(&mut self) -> Tok<'a> {
        let b = self.src.as_bytes();
        let from = self.pos;
        loop {
            let Some(i) = b[self.pos..].iter().position(|&c| c == b'"') else {
                return Tok::Bad;
            };
            self.pos += i + 1;
            if b.get(self.pos) != Some(&b'"') {
                break;
            }
            self.pos += 1;
        }
        match &self.src[from..self.pos - 1] {
            "" => Tok::Bad,
            inner => Tok::Quoted(inner),
        }
    }

    /// Reads a `$n` parameter or a dollar-quoted string from the `$` at `start`.
    fn dollar(&mut self, start: usize) -> Tok<'a> {
        let b = self.src.as_bytes();
        if b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            return self.number(true);
        }
        if b.get(self.pos).is_some_and(|&c| ident_start(c)) {
            while b.get(self.pos).is_some_and(|&c| tag_char(c)) {
                self.pos += 1;
            }
        }
        if b.get(self.pos) != Some(&b'$') {
            return Tok::Bad;
        }
        self.pos += 1;
        let delimiter = &self.src[start..self.pos];
        match self.src[self.pos..].find(delimiter) {
            Some(i) => {
                self.pos += i + delimiter.len();
                Tok::Literal
            }
            None => Tok::Bad,
        }
    }

    /// Reads an identifier or keyword from `start`, or a prefixed string
    /// (`E'`, `B'`, `X'`, `N'`, `U&'`) or `U&"` identifier.
    fn word(&mut self, start: usize) -> Tok<'a> {
        let b = self.src.as_bytes();
        while b
            .get(self.pos)
            .is_some_and(|&c| ident_start(c) || c.is_ascii_digit() || c == b'$')
        {
            self.pos += 1;
        }
        if self.pos == start + 1 {
            let (next, after) = (b.get(self.pos).copied(), b.get(self.pos + 1).copied());
            let string = |lexer: &mut Self, skip, backslash| {
                lexer.pos += skip;
                lexer.string(backslash)
            };
            match (b[start] | 0x20, next, after) {
                (b'e', Some(b'\''), _) => return string(self, 1, true),
                (b'b' | b'x', Some(b'\''), _) => return string(self, 1, false),
                (b'n', Some(b'\''), _) => return string(self, 1, self.backslash_quotes),
                (b'u', Some(b'&'), Some(b'\'')) => return string(self, 2, false),
                (b'u', Some(b'&'), Some(b'"')) => {
                    self.pos += 2;
                    return match self.quoted_ident() {
                        Tok::Quoted(_) => Tok::UnicodeIdent,
                        other => other,
                    };
                }
                _ => {}
            }
        }
        Tok::Word(&self.src[start..self.pos])
    }
}

/// Case-insensitive (ASCII) equality, as PostgreSQL folds unquoted names.
fn ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `t` is the unquoted word `kw`.
fn is_kw(t: Tok<'_>, kw: &str) -> bool {
    matches!(t, Tok::Word(w) if ci(w, kw))
}

/// Whether `list` (lowercase, sorted) holds `name`, folded to lowercase when
/// `fold` (unquoted) and compared exactly otherwise (quoted).
fn listed(list: &[&str], name: &str, fold: bool) -> bool {
    let key = |c: u8| if fold { c.to_ascii_lowercase() } else { c };
    list.binary_search_by(|e| e.bytes().cmp(name.bytes().map(key)))
        .is_ok()
}

/// Whether a name refers to the temporary schema (`pg_temp`, `pg_temp_3`).
fn is_pg_temp(name: &str) -> bool {
    name.len() >= 7 && name.as_bytes()[..7].eq_ignore_ascii_case(b"pg_temp")
}

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

/// Splits `sql` into its statements, as `psql` does: at each `;` outside
/// strings, quoted identifiers, comments, parentheses and the `BEGIN ... END`
/// body of a `CREATE [OR REPLACE] FUNCTION | PROCEDURE` (psql's heuristic:
/// inside such a statement, outside parentheses, `BEGIN` opens a block, `CASE`
/// within a block opens one too and `END` closes one). Each statement comes
/// back trimmed of surrounding whitespace, without its `;`; statements that are
/// empty or only comments are left out.
///
/// `None` when the text cannot be tokenised, or when where it splits depends on
/// `standard_conforming_strings` (a backslash in a plain `'...'` string that
/// moves a boundary): the caller then sends the text whole, and the server
/// decides.
pub(crate) fn split_statements(sql: &str) -> Option<Vec<&str>> {
    if sql.contains('\0') {
        return None;
    }
    let statements = split_with(sql, false)?;
    if sql.contains('\\') && split_with(sql, true)? != statements {
        return None;
    }
    Some(statements)
}

/// [`split_statements`] under one reading of backslashes in `'...'` strings.
fn split_with(sql: &str, backslash_quotes: bool) -> Option<Vec<&str>> {
    let mut lexer = Lexer {
        src: sql,
        pos: 0,
        backslash_quotes,
    };
    let mut statements = Vec::new();
    let (mut start, mut empty) = (0, true);
    // The statement's first four words (lowercased when they matter), its
    // parenthesis depth and its BEGIN ... END depth.
    let mut lead: [&str; 4] = [""; 4];
    let (mut words, mut parens, mut blocks) = (0usize, 0u32, 0u32);
    while let Some(t) = lexer.next_token() {
        match t {
            Tok::Bad => return None,
            Tok::Semi if parens == 0 && blocks == 0 => {
                if !empty {
                    statements.push(sql[start..lexer.pos - 1].trim());
                }
                (start, empty) = (lexer.pos, true);
                (lead, words, parens, blocks) = ([""; 4], 0, 0, 0);
                continue;
            }
            Tok::Open => parens += 1,
            Tok::Close => parens = parens.saturating_sub(1),
            Tok::Word(w) => {
                if let Some(slot) = lead.get_mut(words) {
                    *slot = ["create", "or", "replace", "function", "procedure"]
                        .into_iter()
                        .find(|k| ci(w, k))
                        .unwrap_or("");
                }
                words += 1;
                let routine = lead[0] == "create"
                    && (matches!(lead[1], "function" | "procedure")
                        || (lead[1] == "or"
                            && lead[2] == "replace"
                            && matches!(lead[3], "function" | "procedure")));
                if routine && parens == 0 {
                    if ci(w, "begin") || (ci(w, "case") && blocks > 0) {
                        blocks += 1;
                    } else if ci(w, "end") {
                        blocks = blocks.saturating_sub(1);
                    }
                }
            }
            _ => {}
        }
        empty = false;
    }
    if !empty {
        statements.push(sql[start..].trim());
    }
    Some(statements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Each entry is SQL with `|` at every token boundary. Its text is the entry
    // without the `|` (`|||` being the operator `||`); its tokens are the
    // pieces between `|`, trimmed of spaces, which the property tests join
    // again with other whitespace and comments.

    /// Statements that must never be harmless.
    #[rustfmt::skip]
    const DANGEROUS: &[&str] = &[
        "UPDATE pg_settings SET setting = '1s' WHERE name = 'statement_timeout'",
        "update pg_catalog.pg_settings set setting = 1 where name = 'x'",
        "WITH u AS (UPDATE \"pg_settings\" SET setting = 1 RETURNING 1) SELECT 1",
        "/* app=billing */ |BEGIN", "-- note\n|BEGIN", "/* a /* nested */ b */ |begin",
        "SELECT |1|; |BEGIN", "select |1|;|/**/|start |transaction", "SET |SCHEMA |'x'",
        "SET |search_path |TO |a", "set |session |statement_timeout |= |1",
        "SET |LOCAL |x |= |1|; |SET |y |= |2", "SELECT |set_config|(|'role'|,|'x'|,|false|)",
        "SELECT |pg_catalog|.|set_config|(|'role'|,|'x'|,|false|)",
        r#"SELECT |U&"set\005fconfig"|(|'search_path'|,|'x'|,|false|)"#,
        r#"SELECT |"set_config"|(|'a'|,|'b'|,|false|)"#, r#"SELECT |"LOWER"|(|'a'|)"#,
        "SELECT |pg_advisory_lock|(|4242|)", "SELECT |pg_try_advisory_lock|(|1|)",
        "SELECT |TREAT|(|1|::|bigint |AS |pg_advisory_lock|)", "SELECT |nextval|(|'s'|)",
        "SELECT |pg_notify|(|'c'|, |'x'|)", "SELECT |pg_sleep|(|1|)", "SELECT |lastval|(|)",
        "VALUES |(|set_config|(|'a'|, |'b'|, |false|)|)",
        "UPDATE |t |SET |a |= |pg_advisory_lock|(|1|)",
        "WITH |x |AS |(|SELECT |set_config|(|'a'|, |'b'|, |false|)|) |SELECT |1",
        "WITH |a |AS |(|SELECT |1|) |SELECT |* |FROM |a|, |f|(|1|) |AS |(|x |int|)",
        "SELECT |* |FROM |a |JOIN |b |ON |conflict|(|1|)",
        "SELECT |1 |FROM |t |ORDER |BY |cube|(|1|)",
        "SELECT |x |FROM |t |WHERE |update |LIKE |set|(|1|)",
        "SELECT |x |FROM |t |WHERE |NOT |like|(|1|)", "SELECT |a|.|b|.|lower|(|'x'|)",
        r#"SELECT |"PG_CATALOG"|.|lower|(|'x'|)"#, "CREATE |TEMP |TABLE |t |(|x |int|)",
        "create |temporary |table |if |not |exists |staging|(|x |int|)", "SELECT |1 |INTO |TEMP |t",
        "SELECT |* |INTO |t |FROM |x", "SELECT |insert |INTO |t |FROM |x",
        "WITH |x |AS |(|SELECT |1|) |SELECT |* |INTO |t |FROM |x", "SELECT |* |FROM |pg_temp|.|t",
        r#"SELECT |* |FROM |"pg_temp"|.|t"#, "SELECT |* |FROM |pg_temp_3|.|t",
        "DECLARE |c |CURSOR |WITH |HOLD |FOR |SELECT |1", "PREPARE |p |AS |SELECT |1", "EXECUTE |p",
        "LISTEN |chan", "SET |ROLE |r", "SET |SESSION |AUTHORIZATION |x", "RESET |ALL",
        "DISCARD |ALL", "DO |$$BEGIN PERFORM set_config('a','b',false); END$$",
        "DO |$f$ BEGIN NULL; END $f$", "CALL |p|(|)", "COMMIT |AND |CHAIN", "EXPLAIN |SELECT |1",
        "SELECT |my_function|(|)", "SELECT |public|.|lower|(|'x'|)",
        "SELECT |xe'\\'; SET ROLE x; --'\n", "SELECT |a$$|; |SET |ROLE |x|; |SELECT |$$x$$",
        "SELECT |'\\'|, |' ; SET ROLE x ; --'\n", "SELECT |E'x'\n'\\' , '|; |SET |ROLE |y|; |--'\n",
        "(|SELECT |1|)|; |BEGIN", "SELECT |1|)",
    ];

    /// Texts that do not lex.
    #[rustfmt::skip]
    const BROKEN: &[&str] = &[
        "SELECT |'abc", "/* x", "$$ x", "SELECT |1 |\\ |2", "SELECT |1|\0", "SELECT |\"\"",
        "SELECT |$x", "SELECT |1 |/* unterminated /* nested */",
    ];

    /// Statements that must be harmless.
    #[rustfmt::skip]
    const HARMLESS: &[&str] = &[
        concat!(
            r#"SELECT |"customers"|.|"id"|, |"customers"|.|"name" |FROM |"customers" |WHERE |"#,
            r#"(|"customers"|.|"id" |= |$1|) |LIMIT |$2"#,
        ),
        concat!(
            r#"INSERT |INTO |"customers" |(|"name"|, |"email"|) |VALUES |(|$1|, |$2|) |"#,
            r#"RETURNING |"customers"|.|"id"|, |"customers"|.|"name"|, |"customers"|.|"email""#,
        ),
        r#"INSERT |INTO |"acme"|.|"customers" |(|"name"|) |VALUES |(|$1|)|, |(|DEFAULT|)"#,
        r#"UPDATE |"customers" |SET |"name" |= |$1 |WHERE |(|"customers"|.|"id" |= |$2|)"#,
        r#"DELETE |FROM |"customers" |WHERE |(|"customers"|.|"id" |= |$1|)"#,
        r#"SELECT |COUNT|(|*|) |FROM |"customers""#,
        concat!(
            r#"SELECT |EXISTS |(|SELECT |"customers"|.|"id" |FROM |"customers" |WHERE |(|"#,
            r#""customers"|.|"name" |= |$1|)|)"#,
        ),
        "SELECT |1", "SELECT |current_setting|(|'search_path'|)|, |current_schema|(|)",
        concat!(
            r#"INSERT |INTO |"t" |(|"a"|) |VALUES |(|$1|) |ON |CONFLICT |(|"a"|) |DO |"#,
            r#"UPDATE |SET |"a" |= |excluded|.|"a""#,
        ),
        "WITH |x |AS |(|SELECT |1|) |SELECT |* |FROM |x",
        concat!(
            "WITH |RECURSIVE |r |(|n|) |AS |(|SELECT |1 |UNION |ALL |SELECT |n |+ |1 |",
            "FROM |r|)|, |s|(|m|) |AS |NOT |MATERIALIZED |(|SELECT |2|) |SELECT |* |FROM |",
            "r|, |s",
        ),
        "SELECT |'BEGIN; SET ROLE x'", "SELECT |$$ SET ROLE $$", "SELECT |$a$ $$; BEGIN; $$ $a$",
        "SELECT |E'it\\'s; BEGIN'", "SELECT |'C:\\path'", "SELECT |U&'\\0041; BEGIN' |UESCAPE |'!'",
        "SELECT |'a'\n-- c\n'b; BEGIN'", r#"SELECT |"begin" |FROM |t"#,
        r#"SELECT |"temp"|, |"a;b" |FROM |"weather""#, "SET |LOCAL |statement_timeout |= |'5s'",
        "SET |TRANSACTION |ISOLATION |LEVEL |SERIALIZABLE", "SET |CONSTRAINTS |ALL |DEFERRED",
        r#"SELECT |lower|(|"name"|)|::|varchar|(|20|) |FROM |t"#,
        concat!(
            "SELECT |CAST|(|$1 |AS |numeric|(|10|, |2|)|)|, |$2|::|character |varying|(|5|",
            ")|, |now|(|)|::|timestamp|(|3|) |with |time |zone",
        ),
        "SHOW |search_path", "/* just a comment */", "-- only a comment\n", ";|;",
        "(|SELECT |1|) |UNION |(|SELECT |2|)",
        "SELECT |* |FROM |generate_series|(|1|, |3|) |g|(|i|)",
        "SELECT |* |FROM |(|VALUES |(|1|, |2|)|) |v|(|a|, |b|)",
        "SELECT |* |FROM |unnest|(|$1|) |WITH |ORDINALITY |AS |u|(|v|, |n|)",
        concat!(
            "SELECT |count|(|*|) |FILTER |(|WHERE |x |> |1|) |OVER |(|PARTITION |BY |y |",
            "ORDER |BY |z|) |FROM |t",
        ),
        concat!(
            "SELECT |percentile_cont|(|0.5|) |WITHIN |GROUP |(|ORDER |BY |x|) |FROM |t |",
            "GROUP |BY |CUBE |(|a|, |b|)",
        ),
        concat!(
            "SELECT |EXTRACT|(|YEAR |FROM |now|(|)|)|, |SUBSTRING|(|'abc' |FROM |1 |FOR |2|",
            ")|, |TRIM|(|BOTH |' ' |FROM |'x'|)|, |COALESCE|(|$1|, |0|)",
        ),
        concat!(
            "SELECT |ARRAY|(|SELECT |1|)|, |ROW|(|1|, |2|)|, |x |= |ANY|(|$1|) |FROM |",
            "pg_catalog|.|pg_class",
        ),
        r#"SELECT |pg_catalog|.|lower|(|'X'|)|, |"pg_catalog"|.|"upper"|(|'x'|)"#,
        r#"SELECT |"name" |FROM |"t" |WHERE |"name" |NOT |LIKE |(|$1 ||| |'%'|)"#,
        "SELECT |a |FROM |t |LEFT |JOIN |(|SELECT |1|) |s |ON |true |FOR |UPDATE",
        "UPDATE |t |AS |x |SET |(|a|, |b|) |= |(|$1|, |$2|)",
        concat!(
            "MERGE |INTO |t |USING |s |ON |t|.|id |= |s|.|id |WHEN |MATCHED |THEN |UPDATE |",
            "SET |(|a|) |= |(|s|.|a|) |WHEN |NOT |MATCHED |THEN |INSERT |(|id|) |VALUES |(|",
            "s|.|id|)",
        ),
        concat!(
            "WITH |d |AS |(|INSERT |INTO |t |(|a|) |VALUES |(|1|) |RETURNING |a|) |INSERT |",
            "INTO |u |(|a|) |SELECT |a |FROM |d",
        ),
        "TABLE |t", "INSERT |INTO |t |DEFAULT |VALUES", "SELECT |café |FROM |t |-- trailing\n",
        "SELECT |1|;",
    ];

    /// The text of a list entry; `|||` stands for the operator `||`.
    fn text(s: &str) -> String {
        s.replace("|||", "\u{1}")
            .replace('|', "")
            .replace('\u{1}', "||")
    }

    /// The tokens of a list entry.
    fn tokens(s: &str) -> Vec<String> {
        let s = s.replace("|||", "\u{1}");
        let pieces = s
            .split('|')
            .map(|t| t.trim_matches(' ').replace('\u{1}', "||"));
        pieces.filter(|t| !t.is_empty()).collect()
    }

    /// Joins tokens with chosen separators, changing the case of word tokens.
    fn mangle(tokens: &[String], seps: &[usize], flips: &[bool]) -> String {
        #[rustfmt::skip]
        const SEPS: &[&str] = &[
            " ", "\n", "\t", "  ", "/* c */", "/* a /* nested */ b */", "-- c\n", "/**/",
            " /*-- x*/\r\n",
        ];
        let mut out = String::new();
        for (i, tok) in tokens.iter().enumerate() {
            if i > 0 {
                out.push_str(SEPS[seps[i % seps.len()] % SEPS.len()]);
            }
            let word = tok.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && tok.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !word {
                out.push_str(tok);
                continue;
            }
            for (j, c) in tok.chars().enumerate() {
                out.push(if flips[(i * 7 + j) % flips.len()] {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                });
            }
        }
        out
    }

    /// Whether `s` lexes under both readings and a `;` after it separates
    /// (so that text appended after that `;` cannot change how `s` reads).
    fn lexes_up_to_semicolon(s: &str) -> bool {
        let src = format!("{s};");
        [false, true].into_iter().all(|backslash_quotes| {
            let mut lexer = Lexer {
                src: &src,
                pos: 0,
                backslash_quotes,
            };
            let mut last = (Tok::Semi, 0);
            while let Some(t) = lexer.next_token() {
                if t == Tok::Bad {
                    return false;
                }
                last = (t, lexer.pos);
            }
            last == (Tok::Semi, src.len())
        })
    }

    #[test]
    fn lists_are_sorted_lowercase() {
        for list in [VERBS, NOT_CALLABLE, FUNCTIONS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
            assert!(
                list.iter()
                    .all(|w| !w.bytes().any(|c| c.is_ascii_uppercase()))
            );
        }
    }

    #[test]
    fn dangerous_and_broken_texts_are_not_harmless() {
        for sql in DANGEROUS.iter().chain(BROKEN) {
            assert!(!is_harmless(&text(sql)), "{sql:?}");
        }
        for sql in [
            "SELECT '\0'",
            "SELECT lower('x'",
            "SET",
            "(",
            "SELECT 1 FROM t GROUP BY a, CUBE (b)",
        ] {
            assert!(!is_harmless(sql), "{sql:?}");
        }
    }

    #[test]
    fn harmless_texts_are_harmless() {
        for sql in HARMLESS {
            assert!(is_harmless(&text(sql)), "{sql:?}");
        }
        for sql in [
            "",
            " \n ",
            "/* a /* b */ ; BEGIN */ SELECT 1",
            "SELECT lower/**/('x') -- ;BEGIN",
        ] {
            assert!(is_harmless(sql), "{sql:?}");
        }
    }

    #[test]
    fn lexer_follows_postgresql() {
        fn lex(sql: &str) -> Vec<Tok<'_>> {
            let mut lexer = Lexer {
                src: sql,
                pos: 0,
                backslash_quotes: false,
            };
            std::iter::from_fn(move || lexer.next_token()).collect()
        }
        use Tok::*;
        assert_eq!(
            lex("a$$b $1$$x$$ 1e-"),
            [Word("a$$b"), Literal, Literal, Literal, Word("e"), Op]
        );
        assert_eq!(
            lex("x'1' e'\\'' u&\"a\"\"b\" \"q\"\"\" xe'a'"),
            [
                Literal,
                Literal,
                UnicodeIdent,
                Quoted("q\"\""),
                Word("xe"),
                Literal
            ]
        );
        assert_eq!(
            lex("$a$ $ab$ $a $a$.5::t"),
            [Literal, Literal, Cast, Word("t")]
        );
        assert_eq!(
            lex("'a' /* */ 'b' 'c'\n'd' -- x\r'e'"),
            [Literal, Literal, Literal]
        );
        assert_eq!(lex("+--x\n/*/ x */*/**/"), [Op, Op]);
    }

    /// A regular expression for SQL-like text full of lexical corner cases.
    const SQLISH: &str = "(select|set|local|begin|temp|into|lower|f|e|u&|'x'|\\(|\\)|;|'|\"|\\$|\
                          \\$\\$|--|/\\*|\\*/|\\\\|\n| |\\.|::)*";

    #[test]
    fn splits_like_psql() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            (
                "CREATE TABLE a (x int);\nCREATE INDEX i ON a (x);\n",
                Some(&["CREATE TABLE a (x int)", "CREATE INDEX i ON a (x)"]),
            ),
            (
                "SELECT ';' ; SELECT $t$;$t$;SELECT \";\"; -- ;\n/* ; */",
                Some(&["SELECT ';'", "SELECT $t$;$t$", "SELECT \";\""]),
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
                 SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
                Some(&[
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
                     SELECT CASE WHEN true THEN 2 END; END",
                    "SELECT 3",
                ]),
            ),
            (
                "create or replace procedure p() language sql begin atomic insert into t values (1); end",
                Some(&[
                    "create or replace procedure p() language sql begin atomic insert into t values (1); end",
                ]),
            ),
            // BEGIN outside a routine is a transaction statement.
            ("BEGIN; SELECT 1; END;", Some(&["BEGIN", "SELECT 1", "END"])),
            (
                "DO $$ BEGIN PERFORM 1; END $$; SELECT (1; 2)",
                Some(&["DO $$ BEGIN PERFORM 1; END $$", "SELECT (1; 2)"]),
            ),
            (";; -- only a comment\n; /* x */", Some(&[])),
            (
                "SELECT E'\\';'; SELECT 2",
                Some(&["SELECT E'\\';'", "SELECT 2"]),
            ),
            // Where it splits depends on standard_conforming_strings.
            ("SELECT 'a\\'; SELECT 1; SELECT '", None),
            ("SELECT 'unterminated; SELECT 1", None),
            ("SELECT 1 /* open", None),
            ("SELECT 1;\0", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(split_statements(sql).as_deref(), *expected, "{sql:?}");
        }
    }

    /// Statements for the splitter's properties: each holds `;` or words the
    /// splitter must see past.
    const PIECES: &[&str] = &[
        "CREATE TABLE t (a int, b text DEFAULT ';')",
        "INSERT INTO t VALUES (1, $$;$$), (2, $q$ '; $q$)",
        "SELECT \"a;b\" FROM t WHERE b <> E'\\';'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE 1 WHEN 1 THEN 2 END; END",
        "CREATE INDEX i ON t ((a + 1))",
        "COMMENT ON TABLE t IS 'x;y'",
        "DO $x$ BEGIN PERFORM 1; END $x$",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
        "ALTER TABLE t ADD COLUMN c text CHECK (c <> 'end;')",
        "SELECT 1",
    ];

    /// Text between two statements (after the `;`).
    const GAPS: &[&str] = &[
        " ",
        "\n",
        "\t\n  ",
        " -- a; comment\n",
        "/* ; /* nested; */ */",
        "\r\n",
    ];

    proptest! {
        #[test]
        fn splitting_never_panics(a in ".*", b in any::<String>(), c in SQLISH) {
            for s in [&a, &b, &c] {
                if let Some(parts) = split_statements(s) {
                    prop_assert!(parts.iter().all(|p| !p.is_empty() && s.contains(p)));
                }
            }
        }

        #[test]
        fn splits_at_the_statement_boundaries(
            picks in prop::collection::vec((0..PIECES.len(), 0..GAPS.len(), 0..GAPS.len()), 1..12),
            last_semicolon in any::<bool>(),
        ) {
            let mut text = String::new();
            for (i, &(p, before, after)) in picks.iter().enumerate() {
                text.push_str(GAPS[before]);
                text.push_str(PIECES[p]);
                if i + 1 < picks.len() || last_semicolon {
                    text.push_str(GAPS[after]);
                    text.push(';');
                }
            }
            let parts = split_statements(&text);
            prop_assert!(parts.is_some(), "{:?}", text);
            let parts = parts.unwrap();
            prop_assert_eq!(parts.len(), picks.len(), "{:?} -> {:?}", text, parts);
            for (part, &(p, _, _)) in parts.iter().zip(&picks) {
                prop_assert!(part.contains(PIECES[p]), "{:?} lacks {:?}", part, PIECES[p]);
            }
            // Splitting a statement again finds it whole.
            for part in &parts {
                prop_assert_eq!(split_statements(part).map(|p| p.len()), Some(1), "{:?}", part);
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(a in ".*", b in any::<String>(), c in SQLISH) {
            for s in [&a, &b, &c] {
                let _ = is_harmless(s);
            }
        }

        #[test]
        fn danger_survives_mangling(
            d in 0..DANGEROUS.len() + BROKEN.len(),
            h in 0..HARMLESS.len(),
            seps in prop::collection::vec(0usize..64, 1..40),
            flips in prop::collection::vec(any::<bool>(), 1..40),
        ) {
            let all: Vec<&str> = DANGEROUS.iter().chain(BROKEN).copied().collect();
            let dangerous = mangle(&tokens(all[d]), &seps, &flips);
            let harmless = mangle(&tokens(HARMLESS[h]), &seps, &flips);
            let mut texts = vec![
                format!("{harmless}; {dangerous}"),
                format!("/* c */ -- x\n{dangerous}"),
            ];
            // Text after a broken one may end its string or comment.
            if d < DANGEROUS.len() {
                texts.push(format!("{dangerous};{harmless}"));
            }
            texts.push(dangerous);
            for text in texts {
                prop_assert!(!is_harmless(&text), "{:?}", text);
            }
        }

        #[test]
        fn harmless_survives_mangling(
            h in 0..HARMLESS.len(),
            seps in prop::collection::vec(0usize..64, 1..40),
            flips in prop::collection::vec(any::<bool>(), 1..40),
        ) {
            let text = mangle(&tokens(HARMLESS[h]), &seps, &flips);
            prop_assert!(is_harmless(&text), "{:?}", text);
        }

        #[test]
        fn danger_inside_literals_is_inert(content in any::<String>(), kind in 0..5u8) {
            let content = content.replace('\0', "");
            let literal = match kind {
                // A plain string with a backslash reads differently when
                // standard_conforming_strings is off, so it has none here.
                0 => format!("'{}'", content.replace('\\', "").replace('\'', "''")),
                1 => format!("E'{}'", content.replace('\\', "\\\\").replace('\'', "\\'")),
                2 => format!("U&'{}'", content.replace('\'', "''")),
                3 => {
                    let tag = (0..).map(|i| format!("$q{i}$")).find(|t| {
                        format!("{content}{t}").find(t.as_str()) == Some(content.len())
                    }).unwrap();
                    format!("{tag}{content}{tag}")
                }
                _ => {
                    prop_assume!(!content.is_empty() && !is_pg_temp(&content));
                    format!("\"{}\"", content.replace('"', "\"\""))
                }
            };
            let text = format!("SELECT {literal}");
            prop_assert!(is_harmless(&text), "{:?}", text);
        }

        #[test]
        fn appending_keeps_danger(
            d in 0..DANGEROUS.len(),
            seps in prop::collection::vec(0usize..64, 1..40),
            flips in prop::collection::vec(any::<bool>(), 1..40),
            random in SQLISH,
            tail in any::<String>(),
        ) {
            let dangerous = mangle(&tokens(DANGEROUS[d]), &seps, &flips);
            prop_assert!(lexes_up_to_semicolon(&dangerous), "{:?}", dangerous);
            for text in [dangerous, random] {
                if !is_harmless(&text) && lexes_up_to_semicolon(&text) {
                    let longer = format!("{text};{tail}");
                    prop_assert!(!is_harmless(&longer), "{:?}", longer);
                }
            }
        }
    }
}
