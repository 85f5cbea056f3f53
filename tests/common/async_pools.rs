//! The async pools under test: every async test runs once on deadpool and
//! once on bb8, through the same `AsyncTenantPool` API (`both_pools!`;
//! declare this module with `#[macro_use]`).
#![allow(dead_code, unreachable_pub)]

use diesel_tenancy::{AsyncTenantPool, AsyncTenantPoolBuilder};

/// The pool underneath an `AsyncTenantPool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deadpool,
    Bb8,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Deadpool, Kind::Bb8];

    /// What `AsyncTenantPool::pool_kind` reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deadpool => "deadpool",
            Kind::Bb8 => "bb8",
        }
    }

    /// Builds `builder` on this pool, checking that it is the pool asked for.
    pub fn build(self, builder: AsyncTenantPoolBuilder) -> AsyncTenantPool {
        let pool = match self {
            Kind::Deadpool => builder.build_deadpool(),
            Kind::Bb8 => builder.build_bb8(),
        }
        .expect("async pool");
        assert_eq!(pool.pool_kind(), self.name());
        pool
    }
}

/// `both_pools!(name(kind) { body })`: a module `name` with two tests,
/// `deadpool` and `bb8`, each running `body` with `kind` set, on a
/// multi-thread tokio runtime with `workers` worker threads (2 by default).
macro_rules! both_pools {
    ($(#[$meta:meta])* $name:ident($kind:ident) $body:block) => {
        both_pools!($(#[$meta])* $name($kind, 2) $body);
    };
    ($(#[$meta:meta])* $name:ident($kind:ident, $workers:literal) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($kind: crate::async_pools::Kind) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = $workers)]
            async fn deadpool() {
                run(crate::async_pools::Kind::Deadpool).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = $workers)]
            async fn bb8() {
                run(crate::async_pools::Kind::Bb8).await
            }
        }
    };
}
