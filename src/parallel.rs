//! The worker pool that runs one piece of work per tenant on a bounded number
//! of threads: what `migrate_all`, `create_tenants` and `for_each_tenant`
//! share. A worker opens a session connection only when its work asks for
//! one (`for_each_tenant` checks out a scoped connection per tenant instead).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Result;
use crate::citus::{self, ClusterMode};
use crate::conn::Sessions;

/// How many schemas one worker connection may touch before it is replaced: a
/// backend keeps the catalog entries of every schema it touched and never
/// frees them, so a long run over thousands of tenants would grow it without
/// bound. The default of `MigrateOptions::recycle_after` and of bulk creation.
pub(crate) const RECYCLE_AFTER_SCHEMAS: usize = 250;

/// One worker thread's connection: opened on first use, replaced after
/// `recycle_after` uses.
pub(crate) struct Worker<'p, P: Sessions> {
    pool: &'p P,
    conn: Option<P::Conn>,
    mode: Option<ClusterMode>,
    used: usize,
    recycle_after: usize,
    opened: &'p AtomicUsize,
}

impl<P: Sessions> Worker<'_, P> {
    /// The worker's connection for the next tenant: the one it holds, or a new
    /// one if it holds none or has used it `recycle_after` times.
    pub(crate) fn conn(&mut self) -> Result<&mut P::Conn> {
        if self.used >= self.recycle_after {
            if let Some(mut c) = self.conn.take() {
                P::discard(&mut c);
            }
        }
        if self.conn.is_none() {
            self.used = 0;
            self.mode = None;
            self.conn = Some(self.pool.session()?);
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        self.used += 1;
        Ok(self.conn.as_mut().expect("opened above"))
    }

    /// The connection and the cluster mode of its database, read once per
    /// connection rather than once per tenant.
    pub(crate) fn conn_and_mode(&mut self) -> Result<(&mut P::Conn, ClusterMode)> {
        self.conn()?;
        let conn = self.conn.as_mut().expect("opened above");
        let mode = match self.mode {
            Some(mode) => mode,
            None => *self.mode.insert(citus::detect(conn)?),
        };
        Ok((conn, mode))
    }

    fn finish(mut self) {
        if let Some(mut c) = self.conn.take() {
            if self.used >= self.recycle_after {
                P::discard(&mut c);
            }
        }
    }
}

/// Runs `work` once for every item, on `jobs` threads (at least one, at most
/// one per item). Each thread makes its own state with `init` (for values that
/// cannot be shared between threads) and holds one [`Worker`] connection.
///
/// Returns the results in the items' order, and how many connections were
/// opened. An item whose thread panicked gets `lost(item)`: a result is never
/// dropped.
pub(crate) fn run<P, I, St, R>(
    pool: &P,
    items: &[I],
    jobs: usize,
    recycle_after: usize,
    init: impl Fn() -> St + Sync,
    work: impl Fn(&mut St, &mut Worker<'_, P>, &I) -> R + Sync,
    lost: impl Fn(&I) -> R,
) -> (Vec<R>, usize)
where
    P: Sessions,
    I: Sync,
    R: Send,
{
    if items.is_empty() {
        return (Vec::new(), 0);
    }
    let next = AtomicUsize::new(0);
    let opened = AtomicUsize::new(0);
    let thread = || -> Vec<(usize, R)> {
        let mut state = init();
        let mut worker = Worker {
            pool,
            conn: None,
            mode: None,
            used: 0,
            recycle_after: recycle_after.max(1),
            opened: &opened,
        };
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            out.push((i, work(&mut state, &mut worker, item)));
        }
        worker.finish();
        out
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs.clamp(1, items.len()))
            .map(|_| s.spawn(thread))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    let mut done = done.into_iter().peekable();
    let results = items
        .iter()
        .enumerate()
        .map(|(i, item)| match done.next_if(|(j, _)| *j == i) {
            Some((_, r)) => r,
            None => lost(item),
        })
        .collect();
    (results, opened.load(Ordering::Relaxed))
}
