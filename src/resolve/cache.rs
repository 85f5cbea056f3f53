//! The bounded cache of lookups, and the registry lookups it stands in front of.

use super::*;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::Domain;
#[cfg(feature = "sync")]
use crate::TenantPool;
use crate::registry::{self, Tenant};
#[cfg(feature = "sync")]
use crate::{Error, Result};

#[derive(Clone)]
pub(super) struct Entry {
    tenant: Option<Tenant>,
    /// For a domain key with the redirect option: the tenant's primary domain.
    primary: Option<Domain>,
    expires: Instant,
    generation: u64,
}

/// A bounded cache of domain lookups, found and not found alike.
pub(super) struct Cache {
    map: HashMap<Box<str>, Entry>,
    order: VecDeque<Box<str>>,
    capacity: usize,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Self {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, key: &str, now: Instant, generation: u64) -> Option<&Entry> {
        let entry = self.map.get(key)?;
        (entry.expires > now && entry.generation == generation).then_some(entry)
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key.into(), entry).is_none() {
            self.order.push_back(key.into());
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

impl Resolver {
    pub(super) fn cached(&self, key: &str) -> Option<Option<Tenant>> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key, Instant::now(), registry::generation())
            .map(|e| e.tenant.clone())
    }

    /// A cached domain lookup: the tenant, and the primary domain stored
    /// with it (with the redirect option).
    pub(super) fn cached_domain(&self, key: &str) -> Option<(Option<Tenant>, Option<Domain>)> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key, Instant::now(), registry::generation())
            .map(|e| (e.tenant.clone(), e.primary.clone()))
    }

    /// The blocking pool, which the blocking lookups need.
    #[cfg(feature = "sync")]
    pub(super) fn blocking_pool(&self) -> Result<&TenantPool> {
        self.pool().ok_or(Error::AsyncPoolOnly {
            instead: "Resolver::resolve_async",
        })
    }

    #[cfg(feature = "sync")]
    pub(super) fn load(
        &self,
        key: &str,
        query: impl FnOnce(&mut crate::TenantConnection) -> Result<Option<Tenant>>,
    ) -> Result<Option<Tenant>> {
        // Read the generation first: a change committed during the query makes
        // this answer stale at once.
        let generation = registry::generation();
        let pool = self.blocking_pool()?;
        let found = query(&mut pool.public()?)?;
        self.store(key, generation, &found);
        Ok(found)
    }

    /// [`load`](Self::load) of a domain with the tenant's primary domain.
    #[cfg(feature = "sync")]
    pub(super) fn load_with_primary(
        &self,
        key: &str,
        domain: &Domain,
    ) -> Result<(Option<Tenant>, Option<Domain>)> {
        let generation = registry::generation();
        let pool = self.blocking_pool()?;
        let found = registry::find_tenant_and_primary_by_domain(&mut pool.public()?, domain)?;
        let (tenant, primary) = found.map_or((None, None), |(t, p)| (Some(t), p));
        self.store_with_primary(key, generation, &tenant, primary.clone());
        Ok((tenant, primary))
    }

    /// Caches an answer read under `generation`.
    pub(super) fn store(&self, key: &str, generation: u64, found: &Option<Tenant>) {
        self.store_with_primary(key, generation, found, None);
    }

    /// Caches a domain lookup's answer with the tenant's primary domain.
    pub(super) fn store_with_primary(
        &self,
        key: &str,
        generation: u64,
        found: &Option<Tenant>,
        primary: Option<Domain>,
    ) {
        let ttl = if found.is_some() {
            self.inner.config.ttl
        } else {
            self.inner.config.negative_ttl
        };
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(
            key,
            Entry {
                tenant: found.clone(),
                primary,
                expires: Instant::now() + ttl,
                generation,
            },
        );
    }

    /// Drops every cached answer.
    pub fn invalidate_all(&self) {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
