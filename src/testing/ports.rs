//! The loopback ports a throwaway server may listen on: free ones below (or
//! above) the kernel's ephemeral port range, where no outgoing connection can
//! hold them as its local end.

use std::sync::atomic::{AtomicU32, Ordering};

use super::TestingError;

/// The kernel's ephemeral port range (the local ports it gives outgoing
/// connections), or Linux's default if it cannot be read.
pub(super) fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or((32768, 60999))
}

/// `(lo, hi)` from the two numbers of `ip_local_port_range`, if `lo <= hi`.
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// Every loopback port a throwaway server may use, outside the ephemeral
/// range `(lo, hi)`: from 20000 (or 1024, if the range starts lower) up to
/// `lo`, then above `hi`; rotated to start at `seed` (so that concurrent
/// processes start at different places).
pub(super) fn port_candidates((lo, hi): (u16, u16), seed: u32) -> Vec<u16> {
    let from = if lo > 20000 { 20000 } else { 1024 };
    let mut ports: Vec<u16> = (from..lo).chain(hi.saturating_add(1)..=u16::MAX).collect();
    ports.retain(|p| *p >= 1024 && !(lo..=hi).contains(p));
    if !ports.is_empty() {
        let n = ports.len();
        ports.rotate_left(seed as usize % n);
    }
    ports
}

/// Whether nothing holds `127.0.0.1:port` now (bound the way a server binds
/// it; a port an outgoing connection holds fails too).
pub(super) fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Free loopback ports outside the ephemeral range, checked one by one as
/// they are taken from the iterator.
pub(super) fn free_ports() -> impl Iterator<Item = u16> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(101));
    port_candidates(ephemeral_range(), seed)
        .into_iter()
        .filter(|p| port_is_free(*p))
}

/// The first of [`free_ports`], or an error if there is none.
pub(super) fn free_port() -> Result<u16, TestingError> {
    free_ports().next().ok_or_else(|| TestingError::Io {
        action: "find a free loopback port outside the ephemeral port range".into(),
        source: std::io::ErrorKind::AddrInUse.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_chosen_outside_the_ephemeral_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);

        let ports = port_candidates((32768, 60999), 0);
        assert_eq!(ports[0], 20000, "from 20000 upward");
        assert_eq!(ports[1], 20001);
        assert!(ports.contains(&32767) && ports.contains(&61000) && ports.contains(&65535));
        assert!(ports.iter().all(|p| !(32768..=60999).contains(p)));
        assert_eq!(ports.len(), (32768 - 20000) + (65535 - 60999));
        // The seed rotates the order; the set stays the same.
        let rotated = port_candidates((32768, 60999), 5);
        assert_eq!(rotated[0], 20005);
        assert_eq!(rotated.len(), ports.len());

        let low = port_candidates((10000, 20000), 0);
        assert_eq!(low[0], 1024);
        assert!(low.iter().all(|p| !(10000..=20000).contains(p)));
        assert!(port_candidates((1024, 65535), 3).is_empty());

        let (lo, hi) = ephemeral_range();
        let p = free_port().unwrap();
        assert!(!(lo..=hi).contains(&p), "{p} in {lo}-{hi}");
    }
}
