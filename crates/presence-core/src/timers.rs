//! One deadline queue for every timer of every user.
//!
//! Each key has at most one pending deadline (the earliest instant at which something about it
//! may change); re-arming replaces it. Both maps are kept in step so scheduling, cancelling and
//! popping are O(log n), and there is no lazily-invalidated garbage to accumulate.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// Ordered deadlines, at most one per key.
#[derive(Debug, Clone)]
pub struct DeadlineQueue<K> {
    /// `(deadline, sequence)` → key. The sequence makes entries unique and gives FIFO order
    /// among equal deadlines.
    by_deadline: BTreeMap<(u64, u64), K>,
    /// key → its entry in `by_deadline`.
    by_key: HashMap<K, (u64, u64)>,
    next_seq: u64,
}

impl<K> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            by_deadline: BTreeMap::new(),
            by_key: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<K: Eq + Hash> DeadlineQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms (or re-arms) `key` for `deadline`; `None` cancels it. Allocates an owned key only
    /// when the deadline actually changes.
    pub fn set<Q>(&mut self, key: &Q, deadline: Option<u64>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match deadline {
            None => self.cancel(key),
            Some(deadline) => {
                if self.by_key.get(key).is_some_and(|&(d, _)| d == deadline) {
                    return;
                }
                self.cancel(key);
                let entry = (deadline, self.next_seq);
                self.next_seq += 1;
                self.by_deadline.insert(entry, key.to_owned());
                self.by_key.insert(key.to_owned(), entry);
            }
        }
    }

    /// Removes `key`'s deadline, if any.
    pub fn cancel<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(entry) = self.by_key.remove(key) {
            self.by_deadline.remove(&entry);
        }
    }

    /// The deadline currently armed for `key`.
    pub fn deadline_of<Q>(&self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_key.get(key).map(|&(deadline, _)| deadline)
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline
            .keys()
            .next()
            .map(|&(deadline, _)| deadline)
    }

    /// Removes and returns every key whose deadline is `<= now`, earliest first.
    pub fn pop_due(&mut self, now: u64) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }

    /// Number of armed keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearming_replaces_the_previous_deadline() {
        let mut q = DeadlineQueue::new();
        q.set(&"a", Some(10));
        q.set(&"b", Some(5));
        q.set(&"a", Some(3));
        assert_eq!(q.len(), 2);
        assert_eq!(q.next_deadline(), Some(3));
        assert_eq!(q.pop_due(4), vec!["a"]);
        assert_eq!(q.pop_due(4), Vec::<&str>::new());
        assert_eq!(q.deadline_of(&"b"), Some(5));
        q.set(&"b", None);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn equal_deadlines_pop_in_arming_order() {
        let mut q = DeadlineQueue::new();
        q.set(&"x", Some(7));
        q.set(&"y", Some(7));
        q.set(&"z", Some(6));
        assert_eq!(q.pop_due(7), vec!["z", "x", "y"]);
    }
}
