use super::*;

fn cfg() -> ScopeConfig {
    ScopeConfig::new(vec![], true, true, false, Some(3), None, false, false, None)
}

fn acme() -> ScopeKey {
    ScopeKey::Tenant(SchemaName::new("acme").unwrap(), None, None)
}

fn state(path: &str, head: &str, user: &str, temp: bool) -> ServerState {
    ServerState {
        path: path.into(),
        head: Some(head.into()),
        session_user: user.into(),
        current_user: user.into(),
        temp_schema: temp,
        head_oid: None,
    }
}

fn set(c: &mut ConnState, cfg: &ScopeConfig, scope: &ScopeKey) {
    let Step::Set { path, .. } = c.plan(cfg, scope, false) else {
        panic!("expected a set")
    };
    c.settle(
        cfg,
        scope,
        Some(&path),
        Ok(state(&path, scope.head(), "app", false)),
    )
    .unwrap();
}

#[test]
fn same_tenant_reads_back_then_is_ready() {
    let cfg = cfg();
    let mut c = ConnState::default();
    set(&mut c, &cfg, &acme());
    assert_eq!(c.plan(&cfg, &acme(), false), Step::Ready);
    assert_eq!(c.release(&cfg, Some(false), false), Release::Keep);
    assert_eq!(c.plan(&cfg, &acme(), false), Step::ReadBack);
}

#[test]
fn a_backend_over_the_memory_cap_is_replaced_after_its_borrow() {
    let cfg = ScopeConfig::new(
        vec![],
        true,
        true,
        false,
        None,
        Some(1000),
        false,
        false,
        None,
    );
    let mut c = ConnState::default();
    let due = |c: &mut ConnState| {
        for _ in 0..MEMORY_SAMPLE_EVERY {
            c.begin_checkout(&cfg);
        }
    };
    due(&mut c);
    // Not in transaction-scoped checkouts; due in session ones.
    assert!(matches!(c.plan(&cfg, &acme(), true), Step::Set { .. }));
    assert_eq!(c.plan(&cfg, &acme(), false), Step::SampleMemory);
    c.settle_memory(&cfg, Ok(900));
    assert!(matches!(c.plan(&cfg, &acme(), false), Step::Set { .. }));
    assert_eq!(c.release(&cfg, Some(false), false), Release::Keep);
    due(&mut c);
    assert_eq!(c.plan(&cfg, &acme(), false), Step::SampleMemory);
    c.settle_memory(&cfg, Ok(1001));
    assert_eq!(c.release(&cfg, Some(false), false), Release::Discard);
    let stats = cfg.stats();
    assert_eq!((stats.memory_samples, stats.memory_recycles), (2, 1));
    // Unreadable (no pg_read_all_stats): sampling stops for the pool.
    let mut d = ConnState::default();
    due(&mut d);
    assert_eq!(d.plan(&cfg, &acme(), false), Step::SampleMemory);
    d.settle_memory(&cfg, Err(diesel::result::Error::NotFound));
    due(&mut d);
    assert!(matches!(d.plan(&cfg, &acme(), false), Step::Set { .. }));
}

#[test]
fn a_path_whose_schema_was_renamed_away_is_refused() {
    let cfg = cfg();
    let mut c = ConnState::default();
    let acme = ScopeKey::Tenant(SchemaName::new("acme").unwrap(), None, Some(7));
    let Step::Set { path, .. } = c.plan(&cfg, &acme, false) else {
        panic!("expected a set")
    };
    let mut server = state(&path, "acme", "app", false);
    server.head_oid = Some(7);
    c.settle(&cfg, &acme, Some(&path), Ok(server.clone()))
        .unwrap();
    c.release(&cfg, Some(false), false);
    // Another schema now has the name (the tenants swapped names).
    assert_eq!(c.plan(&cfg, &acme, false), Step::ReadBack);
    server.head_oid = Some(8);
    let refused = c.settle(&cfg, &acme, None, Ok(server.clone()));
    assert!(
        matches!(&refused, Err(Error::SchemaReplaced { schema }) if schema == "acme"),
        "{refused:?}"
    );
    // Forgotten: the next checkout sets the path and checks again.
    assert!(matches!(c.plan(&cfg, &acme, false), Step::Set { .. }));
    let refused = c.settle(&cfg, &acme, Some(&path), Ok(server));
    assert!(matches!(refused, Err(Error::SchemaReplaced { .. })));
    assert!(!c.holds(&acme));
}

#[test]
fn a_statement_not_proven_harmless_resets_at_release() {
    let cfg = cfg();
    let mut c = ConnState::default();
    set(&mut c, &cfg, &acme());
    c.borrower_left_state();
    assert_eq!(c.release(&cfg, Some(false), false), Release::Reset);
    c.settle_reset(&cfg, true);
    assert!(matches!(c.plan(&cfg, &acme(), false), Step::Set { .. }));
}

#[test]
fn another_role_at_checkout_resets_before_handing_out() {
    let cfg = cfg();
    let mut c = ConnState::default();
    set(&mut c, &cfg, &acme());
    c.release(&cfg, Some(false), false);
    assert_eq!(c.plan(&cfg, &acme(), false), Step::ReadBack);
    let mut s = state("\"acme\", public, pg_temp", "acme", "app", false);
    s.current_user = "intruder".into();
    c.settle(&cfg, &acme(), None, Ok(s)).unwrap();
    assert_eq!(c.plan(&cfg, &acme(), false), Step::Reset);
}

#[test]
fn a_temporary_schema_is_probed_and_reset_when_not_empty() {
    let cfg = cfg();
    let mut c = ConnState::default();
    let Step::Set { path, .. } = c.plan(&cfg, &acme(), false) else {
        panic!()
    };
    c.settle(
        &cfg,
        &acme(),
        Some(&path),
        Ok(state(&path, "acme", "app", true)),
    )
    .unwrap();
    assert_eq!(c.plan(&cfg, &acme(), false), Step::ProbeTemp);
    c.settle_probe(&acme(), Ok(true)).unwrap();
    assert_eq!(c.plan(&cfg, &acme(), false), Step::Reset);
}

#[test]
fn open_transactions_panics_and_queries_in_flight_discard() {
    let cfg = cfg();
    for (depth, panicking, in_flight) in [
        (Some(true), false, 0),
        (None, false, 0),
        (Some(false), true, 0),
        (Some(false), false, 1),
    ] {
        let mut c = ConnState::default();
        set(&mut c, &cfg, &acme());
        c.in_flight = in_flight;
        assert_eq!(c.release(&cfg, depth, panicking), Release::Discard);
    }
}

#[test]
fn a_missing_schema_is_refused_and_forgotten() {
    let cfg = cfg();
    let mut c = ConnState::default();
    let Step::Set { path, .. } = c.plan(&cfg, &acme(), false) else {
        panic!()
    };
    let err = c
        .settle(
            &cfg,
            &acme(),
            Some(&path),
            Ok(state(&path, "public", "app", false)),
        )
        .unwrap_err();
    assert!(matches!(err, Error::SchemaMissing { .. }));
    assert!(!c.holds(&acme()));
}

#[test]
fn the_recycle_rule_counts_distinct_schemas() {
    let cfg = cfg();
    let mut c = ConnState::default();
    for name in ["a", "b", "a", "b"] {
        let scope = ScopeKey::Tenant(SchemaName::new(name).unwrap(), None, None);
        set(&mut c, &cfg, &scope);
        c.release(&cfg, Some(false), false);
    }
    assert!(!c.discard);
    set(&mut c, &cfg, &ScopeKey::Public);
    assert_eq!(c.release(&cfg, Some(false), false), Release::Discard);
}
