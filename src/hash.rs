//! Hashing for maps whose keys need no protection from flooding: a campaign's own domains, the
//! engine's destination indices. The standard SipHash cost more than the rest of such a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by the campaign's domains.
pub type DomainMap<V> = HashMap<String, V, BuildHasherDefault<Fx>>;

/// A map keyed by numbers the program assigns itself (destination indices, recipient ids).
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxNumbers>>;

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

/// [`Fx`], its result turned so that a map's buckets come from the product's high bits. A
/// multiply leaves the low bits depending on the key's low bits only, and the maps take their
/// buckets from the low bits: serve's recipient ids (a message's id above 16 bits of index)
/// are all zero there for one-recipient messages, so every id fell in one bucket and each
/// insert probed past all the others (half the producer's time at 100 recipients a request).
/// `Fx` itself stays as it was: `--resume` compares digests made with it.
#[derive(Debug, Default)]
pub struct FxNumbers(Fx);

impl Hasher for FxNumbers {
    fn finish(&self) -> u64 {
        self.0.finish().rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    fn write_u8(&mut self, n: u8) {
        self.0.write_u8(n);
    }

    fn write_u64(&mut self, n: u64) {
        self.0.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
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

    /// `Fx` of the list in the test below, as it was when `--resume` digests were first kept.
    const FX_OF_A_LIST: u64 = 3_780_414_764_526_839_814;

    #[test]
    fn fx_hashes_what_it_hashed_before() {
        // `--resume` and the fleet's shared limits compare values made with it.
        let mut h = Fx::default();
        h.write(b"email,first\nuser0@d0.test,Ann\n");
        assert_eq!(h.finish(), FX_OF_A_LIST);
    }

    #[test]
    fn ids_with_empty_low_bits_spread_over_the_buckets() {
        let build = BuildHasherDefault::<FxNumbers>::default();
        // Recipient ids of one-recipient messages: a message id above 16 zero bits.
        let buckets: HashSet<u64> = (1..=4096u64).map(|m| build.hash_one(m << 16) & 4095).collect();
        assert!(buckets.len() > 2500, "{} of 4096 buckets", buckets.len());
        let mut map: FxMap<u64, u64> = FxMap::default();
        for m in 1..=4096u64 {
            map.insert(m << 16, m);
        }
        assert!((1..=4096u64).all(|m| map.get(&(m << 16)) == Some(&m)));
    }
}
