//! Entries by key that leave once old, without a scan: each arrival is
//! queued with its time, oldest first, and expiry takes from the front only.
//! Removing an entry leaves its arrivals queued; they are skipped when they
//! come up (lazy expiry). The resume buffer's unplaced sections and the
//! router's held reservations are kept this way.

use std::collections::VecDeque;
use std::collections::hash_map::{self, HashMap};
use std::hash::Hash;
use std::time::Instant;

pub struct Expiring<K, V> {
    entries: HashMap<K, V>,
    arrivals: VecDeque<(Instant, K)>,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Self { entries: HashMap::new(), arrivals: VecDeque::new() }
    }
}

impl<K: Eq + Hash + Clone, V> Expiring<K, V> {
    /// Notes an arrival for `key` at `now`; the caller fills in its entry.
    pub fn arrive(&mut self, key: K, now: Instant) -> hash_map::Entry<'_, K, V> {
        self.arrivals.push_back((now, key.clone()));
        self.entries.entry(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key)
    }

    /// Takes the arrivals `is_old` says are old, oldest first: each hands its
    /// key's entry, if it is still here, to `prune` with the arrival's time;
    /// the entry goes when `prune` says so.
    pub fn expire(&mut self, is_old: impl Fn(Instant) -> bool, mut prune: impl FnMut(Instant, &mut V) -> bool) {
        while let Some(&(arrived, _)) = self.arrivals.front()
            && is_old(arrived)
        {
            let (arrived, key) = self.arrivals.pop_front().expect("front exists");
            if let Some(entry) = self.entries.get_mut(&key)
                && prune(arrived, entry)
            {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn old_arrivals_leave_from_the_front_and_prune_decides_for_their_entry() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let mut expiring: Expiring<&str, Instant> = Expiring::default();
        expiring.arrive("a", start).insert_entry(start);
        expiring.arrive("b", start).insert_entry(start);
        expiring.arrive("a", later).insert_entry(later);
        expiring.remove(&"b");
        let mut seen = Vec::new();
        // Keep an entry that arrived again since.
        expiring.expire(
            |arrived| arrived == start,
            |arrived, latest| {
                seen.push(arrived);
                *latest == arrived
            },
        );
        assert_eq!(seen, vec![start], "b was removed: only a's first arrival is handed over");
        assert_eq!(expiring.get(&"a"), Some(&later), "a arrived again: kept");
        expiring.expire(|_| true, |arrived, latest| *latest == arrived);
        assert_eq!(expiring.get(&"a"), None);
    }
}
