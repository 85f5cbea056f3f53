//! The pool underneath, deadpool or bb8, and a connection checked out of it.

use super::*;
use std::ops::{Deref, DerefMut};

use diesel_async::AsyncPgConnection;

use crate::Result;

/// The pool underneath.
#[derive(Clone)]
pub(super) enum Pool {
    #[cfg(feature = "deadpool")]
    Deadpool(deadpool::Pool),
    #[cfg(feature = "bb8")]
    Bb8(bb8::Pool),
}

impl Pool {
    pub(super) async fn get(&self) -> Result<Pooled> {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(pool) => pool.get().await.map(Pooled::Deadpool),
            #[cfg(feature = "bb8")]
            Pool::Bb8(pool) => pool.get().await.map(Pooled::Bb8),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(_) => "deadpool",
            #[cfg(feature = "bb8")]
            Pool::Bb8(_) => "bb8",
        }
    }

    pub(super) fn max_size(&self) -> usize {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(pool) => pool.max_size(),
            #[cfg(feature = "bb8")]
            Pool::Bb8(pool) => pool.max_size(),
        }
    }

    /// Connections open, and of those idle.
    pub(super) fn status(&self) -> (usize, usize) {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(pool) => pool.status(),
            #[cfg(feature = "bb8")]
            Pool::Bb8(pool) => pool.status(),
        }
    }
}

/// A connection checked out of the pool underneath; back to it when dropped.
pub(super) enum Pooled {
    #[cfg(feature = "deadpool")]
    Deadpool(deadpool::Conn),
    #[cfg(feature = "bb8")]
    Bb8(bb8::Conn),
}

impl Pooled {
    /// Closes the connection instead of giving it back.
    pub(super) fn discard(self) {
        match self {
            #[cfg(feature = "deadpool")]
            Pooled::Deadpool(conn) => deadpool::discard(conn),
            #[cfg(feature = "bb8")]
            Pooled::Bb8(conn) => bb8::discard(conn),
        }
    }
}

impl Deref for Pooled {
    type Target = AsyncPgConnection;
    #[inline]
    fn deref(&self) -> &AsyncPgConnection {
        match self {
            #[cfg(feature = "deadpool")]
            Pooled::Deadpool(conn) => conn,
            #[cfg(feature = "bb8")]
            Pooled::Bb8(conn) => conn,
        }
    }
}

impl DerefMut for Pooled {
    #[inline]
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        match self {
            #[cfg(feature = "deadpool")]
            Pooled::Deadpool(conn) => conn,
            #[cfg(feature = "bb8")]
            Pooled::Bb8(conn) => conn,
        }
    }
}
