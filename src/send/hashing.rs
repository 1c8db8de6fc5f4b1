//! The set of recipients' fingerprints, for de-duplication on `send`'s per-recipient path.

/// The set of addresses' fingerprints (64-bit hashes) seen, for de-duplication: open
/// addressing with linear probing, at most 3/4 full, so 11-22 bytes an address.
///
/// It is its own type rather than a `HashSet` so that the slot of a fingerprint can be fetched
/// into the cache ahead of the insert ([`prefetch`](Self::prefetch)): with millions of
/// addresses the set is tens of megabytes, and each insert lands on a random line of it, a
/// miss to main memory that otherwise stalls the producer on every row.
#[derive(Debug, Default)]
pub struct Fingerprints {
    /// Zero marks an empty slot; the fingerprint 0 is stored as [`ZERO`].
    slots: Vec<u64>,
    len: usize,
}

/// What the fingerprint 0 is stored as. It then shares a slot with this one fingerprint: one more
/// chance in 2⁶⁴ that two addresses count as one.
const ZERO: u64 = 0x9e37_79b9_7f4a_7c15;

/// Slots of the first table.
const FIRST: usize = 1024;

impl Fingerprints {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `fingerprint`; false if it was there already.
    pub fn insert(&mut self, fingerprint: u64) -> bool {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow_to(self.len + 1);
        }
        let key = stored(fingerprint);
        match self.find(key) {
            Ok(_) => false,
            Err(empty) => {
                self.slots[empty] = key;
                self.len += 1;
                true
            }
        }
    }

    pub fn contains(&self, fingerprint: u64) -> bool {
        !self.slots.is_empty() && self.find(stored(fingerprint)).is_ok()
    }

    /// The slot holding `key` (`Ok`), or the empty slot where it would go (`Err`). The table
    /// must have slots; it is never full, so the probe ends.
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.slots[i] {
                0 => return Err(i),
                k if k == key => return Ok(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Starts fetching the slot `fingerprint` would go to into the cache; an insert of it a
    /// little later then finds it there. Only a hint: it changes nothing.
    pub fn prefetch(&self, fingerprint: u64) {
        if self.slots.is_empty() {
            return;
        }
        let slot = &self.slots[stored(fingerprint) as usize & (self.slots.len() - 1)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing the program sees and cannot fault; the pointer is
        // to a live slot anyway. SSE is part of x86_64.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Makes room for `additional` more fingerprints without growing on the way.
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want * 4 > self.slots.len() * 3 {
            self.grow_to(want);
        }
    }

    /// Rebuilds the table with room for `len` fingerprints at most 3/4 full.
    fn grow_to(&mut self, len: usize) {
        let need = len.saturating_mul(4).div_ceil(3).max(FIRST).next_power_of_two();
        let old = std::mem::replace(&mut self.slots, vec![0; need]);
        for key in old.into_iter().filter(|&k| k != 0) {
            // Keys are distinct: each finds an empty slot.
            if let Err(empty) = self.find(key) {
                self.slots[empty] = key;
            }
        }
    }
}

fn stored(fingerprint: u64) -> u64 {
    if fingerprint == 0 { ZERO } else { fingerprint }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn fingerprints_are_counted_once_whatever_slot_they_land_on() {
        let last = FIRST as u64 - 1;
        // (fingerprint, newly added): the same low bits probe on, past the table's end too.
        let cases = [
            (5, true),
            (5, false),
            (5 + (1 << 40), true),
            (5 + (2 << 40), true),
            (5 + (1 << 40), false),
            (last, true),
            (last + (1 << 40), true), // wraps to slot 0
            (0, true),
            (0, false),
            (ZERO, false), // stored as 0 is: the one documented sharing
            (last + (1 << 40), false),
        ];
        let mut set = Fingerprints::default();
        for (i, (fingerprint, new)) in cases.into_iter().enumerate() {
            assert_eq!(set.insert(fingerprint), new, "case {i}: {fingerprint:#x}");
        }
        assert_eq!(set.len(), 6);
        // Growing rehashes every fingerprint; none is lost or doubled.
        set.reserve(10_000);
        assert!(set.slots.len() >= 10_006 * 4 / 3);
        for (fingerprint, _) in cases {
            assert!(!set.insert(fingerprint), "{fingerprint:#x} survived the rehash");
        }
        assert_eq!(set.len(), 6);
        set.prefetch(5); // a hint, and harmless on an empty set too
        Fingerprints::default().prefetch(5);
    }

    proptest! {
        /// The set answers as `HashSet` does, over fingerprints drawn from a small range (so
        /// duplicates and shared slots are common) and across several growths.
        #[test]
        fn fingerprints_behave_as_a_hash_set(
            keys in prop::collection::vec(prop_oneof![0u64..3000, any::<u64>()], 0..5000)
        ) {
            let (mut ours, mut std) = (Fingerprints::default(), HashSet::new());
            for k in keys {
                let k = if k == ZERO { 1 } else { k }; // ZERO and 0 are one, by design
                prop_assert_eq!(ours.contains(k), std.contains(&k));
                prop_assert_eq!(ours.insert(k), std.insert(k));
                prop_assert!(ours.contains(k));
                prop_assert_eq!(ours.len(), std.len());
                prop_assert!(ours.len() * 4 <= ours.slots.len() * 3);
            }
        }
    }
}
