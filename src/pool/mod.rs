//! The tenant-scoped pools: the blocking pool on r2d2 ([`r2d2_pool`]), the
//! async pool on diesel-async's deadpool or bb8 ([`async_pool`]), and the
//! settings both are built from ([`settings`]). Both drive the one scope state
//! machine in [`crate::scope`]; each only sends its statements.

#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) mod async_pool;
#[cfg(feature = "sync")]
pub(crate) mod r2d2_pool;
pub(crate) mod settings;
