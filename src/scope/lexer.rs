//! SQL text split into PostgreSQL's tokens and statements.
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

/// One token; comments and whitespace are skipped, literal contents dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok<'a> {
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
pub(super) struct Lexer<'a> {
    /// The text.
    pub(super) src: &'a str,
    /// The byte offset of the next unread character.
    pub(super) pos: usize,
    /// Whether `'...'` strings take backslash escapes
    /// (`standard_conforming_strings = off`).
    pub(super) backslash_quotes: bool,
}

/// Whether `c` may start an identifier (non-ASCII bytes may, as in PostgreSQL).
pub(super) fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// Whether `c` may continue a dollar-quote tag.
pub(super) fn tag_char(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit()
}

/// Whether `c` is PostgreSQL whitespace.
pub(super) fn space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

impl<'a> Lexer<'a> {
    /// The next token, or `None` at the end of the text.
    pub(super) fn next_token(&mut self) -> Option<Tok<'a>> {
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
    pub(super) fn skip_line_comment(&mut self) {
        let rest = &self.src.as_bytes()[self.pos..];
        self.pos += rest
            .iter()
            .position(|&c| c == b'\n' || c == b'\r')
            .unwrap_or(rest.len());
    }

    /// Skips a `/* */` comment, which nests; `false` if it is unterminated.
    pub(super) fn skip_block_comment(&mut self) -> bool {
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
    pub(super) fn number(&mut self, started_with_dot: bool) -> Tok<'a> {
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
    pub(super) fn string(&mut self, backslash: bool) -> Tok<'a> {
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
    pub(super) fn quoted_ident(&mut self) -> Tok<'a> {
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
    pub(super) fn dollar(&mut self, start: usize) -> Tok<'a> {
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
    pub(super) fn word(&mut self, start: usize) -> Tok<'a> {
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
pub(super) fn ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `t` is the unquoted word `kw`.
pub(super) fn is_kw(t: Tok<'_>, kw: &str) -> bool {
    matches!(t, Tok::Word(w) if ci(w, kw))
}

/// Whether `list` (lowercase, sorted) holds `name`, folded to lowercase when
/// `fold` (unquoted) and compared exactly otherwise (quoted).
pub(super) fn listed(list: &[&str], name: &str, fold: bool) -> bool {
    let key = |c: u8| if fold { c.to_ascii_lowercase() } else { c };
    list.binary_search_by(|e| e.bytes().cmp(name.bytes().map(key)))
        .is_ok()
}

/// Whether a name refers to the temporary schema (`pg_temp`, `pg_temp_3`).
pub(super) fn is_pg_temp(name: &str) -> bool {
    name.len() >= 7 && name.as_bytes()[..7].eq_ignore_ascii_case(b"pg_temp")
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
pub(super) fn split_with(sql: &str, backslash_quotes: bool) -> Option<Vec<&str>> {
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
