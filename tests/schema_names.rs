//! Schema names and domains: parsing never panics, accepts only what is valid,
//! says which rule failed, and what it accepts really works on the server.
#![allow(missing_docs)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{Domain, RESERVED_SCHEMA_NAMES, SchemaName, SchemaNameError};
use proptest::prelude::*;

/// Which rule a name breaks, written from the rules' text, first rule first.
#[derive(Debug, PartialEq)]
enum Rule {
    Empty,
    Start,
    Char,
    Length,
    PgPrefix,
    Reserved,
}

fn expected(name: &str) -> Option<Rule> {
    let lower_or_underscore = |c: char| c.is_ascii_lowercase() || c == '_';
    match name.chars().next() {
        None => Some(Rule::Empty),
        Some(c) if !lower_or_underscore(c) => Some(Rule::Start),
        _ if !name
            .chars()
            .all(|c| lower_or_underscore(c) || c.is_ascii_digit()) =>
        {
            Some(Rule::Char)
        }
        _ if name.len() > 63 => Some(Rule::Length),
        _ if name.starts_with("pg_") => Some(Rule::PgPrefix),
        _ if RESERVED_SCHEMA_NAMES.contains(&name) => Some(Rule::Reserved),
        _ => None,
    }
}

fn rule_of(result: &Result<SchemaName, SchemaNameError>) -> Option<Rule> {
    match result {
        Ok(_) => None,
        Err(SchemaNameError::Empty) => Some(Rule::Empty),
        Err(SchemaNameError::InvalidStart { .. }) => Some(Rule::Start),
        Err(SchemaNameError::InvalidChar { .. }) => Some(Rule::Char),
        Err(SchemaNameError::TooLong { .. }) => Some(Rule::Length),
        Err(SchemaNameError::SystemPrefix { .. }) => Some(Rule::PgPrefix),
        Err(SchemaNameError::Reserved { .. }) => Some(Rule::Reserved),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Names that are nearly valid: valid characters with one defect mixed in.
fn near_valid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,70}",
        "pg_[a-z0-9_]{0,10}",
        "[a-z_][a-z0-9_]{0,5}[A-Z;'\" .\\-$\\x00é\u{430}][a-z0-9_]{0,5}",
        "[A-Z0-9$\\-][a-z0-9_]{0,8}",
        Just("public".to_owned()),
        Just("information_schema".to_owned()),
        Just("diesel_tenancy".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings_never_panic_and_fail_the_right_rule(s in any::<String>()) {
        let result = SchemaName::new(&s);
        prop_assert_eq!(rule_of(&result), expected(&s));
    }

    #[test]
    fn near_valid_names_fail_the_right_rule(s in near_valid()) {
        let result = SchemaName::new(&s);
        prop_assert_eq!(rule_of(&result), expected(&s));
        if let Ok(name) = result {
            prop_assert_eq!(name.as_str(), s.as_str());
            prop_assert_eq!(name.quoted(), format!("\"{s}\""));
        }
    }

    #[test]
    fn domains_never_panic_and_normalise_to_plain_ascii(s in any::<String>()) {
        if let Ok(d) = Domain::parse(&s) {
            prop_assert!(d.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            prop_assert_eq!(Domain::parse(d.as_str()).unwrap(), d);
        }
    }

    #[test]
    fn host_like_domains_normalise_idempotently(s in "[a-zA-Z0-9\\-._üß]{1,30}(:[0-9]{1,6})?\\.?") {
        if let Ok(d) = Domain::parse(&s) {
            prop_assert!(d.as_str().len() <= 253);
            prop_assert_eq!(Domain::parse(d.as_str()).unwrap(), d);
        }
    }
}

#[test]
fn injection_attempts_are_refused() {
    let too_long = "a".repeat(64);
    for attempt in [
        "a; DROP SCHEMA public",
        "a\"; DROP SCHEMA public; --",
        "a'",
        "\"a\"",
        "a b",
        "a-b",
        "a.b",
        "a\0b",
        "",
        too_long.as_str(),
        "\u{430}cme",   // Cyrillic а
        "acm\u{435}",   // Cyrillic е
        "ａｃｍｅ",     // full-width letters
        "acme\u{200b}", // zero-width space
        "ACME",
        "pg_temp",
        "public",
        "information_schema",
    ] {
        assert!(
            SchemaName::new(attempt).is_err(),
            "{attempt:?} was accepted"
        );
    }
}

/// Every accepted name is usable as-is on the server: created, put on the path,
/// reported back as the current schema.
#[test]
fn accepted_names_work_on_the_server() {
    let db = TestDatabase::new().unwrap();
    let conn = std::cell::RefCell::new(PgConnection::establish(db.url()).unwrap());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(300));
    // Keywords are valid names too: quoting makes them work.
    for name in ["select", "user", "table", "_", "a", &"z".repeat(63)] {
        check_on_server(&mut conn.borrow_mut(), name);
    }
    runner
        .run(&"[a-z_][a-z0-9_]{0,62}", |s| {
            if SchemaName::new(&s).is_ok() {
                check_on_server(&mut conn.borrow_mut(), &s);
            }
            Ok(())
        })
        .unwrap();
}

fn check_on_server(conn: &mut PgConnection, name: &str) {
    let name = SchemaName::new(name).unwrap();
    let q = name.quoted();
    conn.batch_execute(&format!(
        "CREATE SCHEMA {q}; SET search_path TO {q}; CREATE TABLE t (x int)"
    ))
    .unwrap_or_else(|e| panic!("{name:?} failed on the server: {e}"));
    let current: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_schema()",
    ))
    .get_result(conn)
    .unwrap();
    assert_eq!(current, name.as_str());
    conn.batch_execute(&format!(
        "SET search_path TO public; DROP SCHEMA {q} CASCADE"
    ))
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The host normaliser never panics; what it accepts as a name is plain
    /// lowercase LDH, and normalising again changes nothing.
    #[test]
    fn hosts_never_panic_and_accept_only_plain_names(s in any::<String>()) {
        if let Ok(diesel_tenancy::Host::Name(d)) = diesel_tenancy::normalize_host(&s) {
            prop_assert!(d.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            prop_assert_eq!(diesel_tenancy::normalize_host(d.as_str()).unwrap(), diesel_tenancy::Host::Name(d));
        }
    }

    /// Hosts with SQL metacharacters, quotes, spaces or NUL are never accepted.
    #[test]
    fn hosts_with_metacharacters_are_refused(
        head in "[a-z]{1,10}",
        bad in prop::sample::select(vec!["'", "\"", ";", " ", "\0", "/*", "\\", "(", ")", ",", "=", "%", "\n"]),
        tail in "[a-z]{1,10}",
    ) {
        let host = format!("{head}{bad}{tail}.example.com");
        prop_assert!(diesel_tenancy::normalize_host(&host).is_err(), "{:?} accepted", host);
        prop_assert!(Domain::parse(&host).is_err());
    }

    /// Percent-escapes that decode to a valid host (`%2e` for `.`, `%61` for
    /// `a`, in either case) never make the parser see another host: a host
    /// with any escape is refused, so it can never route differently from
    /// what a proxy that decodes it would route.
    #[test]
    fn percent_escapes_never_reach_another_host(
        labels in prop::collection::vec("[a-z][a-z0-9]{0,7}", 2..4),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        upper in any::<bool>(),
    ) {
        let host = labels.join(".");
        let mut chars: Vec<String> = host.chars().map(String::from).collect();
        for pick in &picks {
            let i = pick.index(chars.len());
            let c = host.as_bytes()[i];
            chars[i] = if upper { format!("%{c:02X}") } else { format!("%{c:02x}") };
        }
        let escaped = chars.concat();
        prop_assert!(diesel_tenancy::normalize_host(&host).is_ok(), "{:?}", host);
        prop_assert!(diesel_tenancy::normalize_host(&escaped).is_err(), "{:?} accepted", escaped);
        prop_assert!(Domain::parse(&escaped).is_err());
    }
}

#[test]
fn hostile_hosts_are_refused() {
    let huge = "a".repeat(8 * 1024);
    let long_label = format!("{}.example.com", "a".repeat(64));
    for host in [
        huge.as_str(),
        long_label.as_str(),
        "\u{430}pple.com",  // Cyrillic а among Latin letters
        "xn--pple-43d.com", // the same, in punycode
        "p\u{3b1}ypal.com", // Greek α among Latin letters
        "acme.example.com\0",
        "acme.example.com:0x50",
        "",
    ] {
        assert!(
            diesel_tenancy::normalize_host(host).is_err(),
            "{host:?} accepted"
        );
    }
}
