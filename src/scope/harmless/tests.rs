use super::*;
use crate::scope::lexer::split_statements;
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
