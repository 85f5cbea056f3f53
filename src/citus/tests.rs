use super::*;

#[test]
fn node_addresses_parse() {
    let ok = |s: &str, host: &str, port: u16| {
        assert_eq!(
            s.parse::<NodeAddr>(),
            Ok(NodeAddr {
                host: host.into(),
                port
            }),
            "{s}"
        );
    };
    ok("127.0.0.1:5432", "127.0.0.1", 5432);
    ok("worker-1.internal:6432", "worker-1.internal", 6432);
    ok("[::1]:5432", "::1", 5432);
    for bad in [
        "",
        "host",
        ":5432",
        "host:",
        "host:0",
        "host:65536",
        "::1:5432",
        "host:54x",
        "ho st:1",
        "h;drop:1",
        "[::1:5432",
    ] {
        assert!(bad.parse::<NodeAddr>().is_err(), "{bad:?}");
    }
    assert_eq!(
        "127.0.0.1:5432".parse::<NodeAddr>().unwrap().to_string(),
        "127.0.0.1:5432"
    );
}
