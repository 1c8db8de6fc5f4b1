//! Hashing for maps whose keys need no protection from flooding: a campaign's own domains, the
//! engine's destination indices. The standard SipHash cost more than the rest of such a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by the campaign's domains.
pub type DomainMap<V> = HashMap<String, V, BuildHasherDefault<Fx>>;

/// A map keyed by numbers the program assigns itself (destination indices).
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// The Firefox/rustc hash: a multiply and a rotate per word.
#[derive(Debug, Default)]
pub struct Fx(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn domains_hash_apart_and_maps_find_them() {
        let build = BuildHasherDefault::<Fx>::default();
        let names =
            ["a.test", "b.test", "a.test.", "example.com", "example.co", "", "a-much-longer-domain.example"];
        let hashes: HashSet<u64> = names.iter().map(|n| build.hash_one(n)).collect();
        assert_eq!(hashes.len(), names.len(), "the strings' length is hashed too");
        let mut map = DomainMap::default();
        for (i, n) in names.iter().enumerate() {
            map.insert((*n).to_owned(), i);
        }
        assert!(names.iter().enumerate().all(|(i, n)| map.get(*n) == Some(&i)));
    }
}
