//! In-memory copies of rows the request path reads on every operator call (a token by hash, a host
//! by id), so that a call does not wait for SQLite twice before it is forwarded.
//!
//! Only rows that exist are kept; a miss always asks the database. The store forgets entries
//! after every write that changes their table, once the write is done, so the next lookup reads
//! the new row (a revoked token is refused on the very next request). A reader that queried
//! before such a write finished must not put the old row back afterwards: each cache has a
//! generation that every forgetting bumps, a reader notes it before querying
//! ([`Cache::get`]) and the row is kept only if it is unchanged ([`Cache::insert`]), both under
//! the one mutex.
//!
//! The control plane is the only writer of its database. Entries also expire after a TTL, which
//! bounds how long a change made behind its back (another process writing the file) goes unseen.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Entries per cache at most; a full cache is emptied (simple, and a refill is one query each).
pub(super) const CAPACITY: usize = 4096;
/// How long an entry is served without asking the database, whatever happens.
pub(super) const TTL: Duration = Duration::from_secs(10);

/// A cache's generation as a reader saw it before querying, to hand back to [`Cache::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) struct Generation(u64);

/// What [`Cache::get`] found.
#[derive(Debug)]
pub(super) enum Lookup<V> {
    Hit(V),
    /// Not cached (or expired): query, then [`Cache::insert`] with this generation.
    Miss(Generation),
}

/// Rows by key, bounded in size and age. The mutex is held for a map operation at most, never
/// across an `.await`.
pub(super) struct Cache<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
    ttl: Duration,
}

struct Inner<K, V> {
    /// Bumped by every [`Cache::forget`] and [`Cache::clear`].
    generation: u64,
    entries: HashMap<K, (Instant, V)>,
    #[cfg(test)]
    hits: u64,
    #[cfg(test)]
    misses: u64,
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                generation: 0,
                entries: HashMap::new(),
                #[cfg(test)]
                hits: 0,
                #[cfg(test)]
                misses: 0,
            }),
            capacity,
            ttl,
        }
    }

    /// A poisoned lock still guards consistent data: every critical section is one map
    /// operation and a counter.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key` if younger than the TTL; otherwise the generation to insert with.
    pub(super) fn get<Q>(&self, key: &Q) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        let fresh = match inner.entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                inner.entries.remove(key);
                None
            }
            None => None,
        };
        #[cfg(test)]
        match fresh {
            Some(_) => inner.hits += 1,
            None => inner.misses += 1,
        }
        match fresh {
            Some(v) => Lookup::Hit(v),
            None => Lookup::Miss(Generation(inner.generation)),
        }
    }

    /// Keeps `value`, read from the database after [`Cache::get`] returned `seen`, unless a write
    /// was forgotten since: then it may be older than that write and is dropped.
    pub(super) fn insert(&self, seen: Generation, key: K, value: V) {
        let mut inner = self.lock();
        if inner.generation != seen.0 {
            return;
        }
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key) {
            inner.entries.clear();
        }
        inner.entries.insert(key, (Instant::now(), value));
    }

    /// After a write that changed `key`'s row has finished: drops it, and any row read before.
    pub(super) fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.remove(key);
    }

    /// After a write that changed rows of unknown keys has finished: drops everything, and any
    /// row read before.
    pub(super) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }

    /// (hits, misses) since creation.
    #[cfg(test)]
    pub(super) fn stats(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hits, inner.misses)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Sizes only: the keys are token hashes.
impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Cache<String, u32> {
        Cache::new(CAPACITY, TTL)
    }

    fn miss(c: &Cache<String, u32>, key: &str) -> Generation {
        match c.get(key) {
            Lookup::Miss(g) => g,
            Lookup::Hit(v) => panic!("{key}: unexpected hit {v}"),
        }
    }

    fn hit(c: &Cache<String, u32>, key: &str) -> Option<u32> {
        match c.get(key) {
            Lookup::Hit(v) => Some(v),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn serves_what_was_inserted_and_counts() {
        let c = cache();
        let g = miss(&c, "a");
        c.insert(g, "a".into(), 1);
        assert_eq!(hit(&c, "a"), Some(1));
        assert_eq!(hit(&c, "a"), Some(1));
        assert_eq!(hit(&c, "b"), None);
        assert_eq!(c.stats(), (2, 2));
    }

    #[test]
    fn a_row_read_before_a_write_is_not_kept_after_it() {
        for clear in [false, true] {
            let c = cache();
            // A reader notes the generation and queries (old row: 1) ...
            let g = miss(&c, "a");
            // ... the write commits and is forgotten before the reader inserts.
            if clear {
                c.clear();
            } else {
                c.forget("a");
            }
            c.insert(g, "a".into(), 1);
            assert_eq!(hit(&c, "a"), None, "clear: {clear}");
            // The next reader reads the new row and keeps it.
            let g = miss(&c, "a");
            c.insert(g, "a".into(), 2);
            assert_eq!(hit(&c, "a"), Some(2));
        }
    }

    #[test]
    fn forget_drops_the_entry_and_clear_drops_all() {
        let c = cache();
        for (k, v) in [("a", 1), ("b", 2)] {
            let g = miss(&c, k);
            c.insert(g, k.into(), v);
        }
        c.forget("a");
        assert_eq!(hit(&c, "a"), None);
        assert_eq!(hit(&c, "b"), Some(2));
        c.clear();
        assert_eq!(hit(&c, "b"), None);
    }

    #[test]
    fn entries_expire() {
        let c: Cache<String, u32> = Cache::new(CAPACITY, Duration::from_millis(20));
        let g = miss(&c, "a");
        c.insert(g, "a".into(), 1);
        assert_eq!(hit(&c, "a"), Some(1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(hit(&c, "a"), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn size_is_bounded() {
        let c: Cache<String, u32> = Cache::new(2, TTL);
        let put = |k: &str, v| {
            let g = match c.get(k) {
                Lookup::Hit(_) => Generation(c.lock().generation),
                Lookup::Miss(g) => g,
            };
            c.insert(g, k.into(), v);
        };
        put("a", 1);
        put("b", 2);
        // Replacing a present key keeps the others; a new key in a full cache empties it.
        put("a", 3);
        assert_eq!((hit(&c, "a"), hit(&c, "b")), (Some(3), Some(2)));
        put("c", 4);
        assert_eq!(c.len(), 1);
        assert_eq!(hit(&c, "c"), Some(4));
        for i in 0..100 {
            put(&i.to_string(), i);
            assert!(c.len() <= 2);
        }
    }
}
