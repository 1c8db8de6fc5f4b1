//! Policies kept between lookups and between runs (RFC 8461 §3.3, §5.1), and the rule that
//! decides whether to fetch: a policy is used until its `max_age` has passed; a new TXT `id`
//! asks for a fetch; and when a fetch fails, or the TXT record is gone, a policy still valid
//! holds (so that an attacker who blocks the fetch or the record cannot downgrade delivery to
//! plaintext). Sans-IO: the caller looks the record up, fetches, and says what it got.
//!
//! A policy in use is refreshed before it expires (RFC 8461 §10.2: a policy kept warm by
//! refetching cannot be ended by an attacker who blocks fetches later): once half its
//! `max_age` has passed, if a route used it since it was fetched ([`Cache::to_refresh`]). A
//! policy nothing uses is left to expire.
//!
//! Kept in a file (`send --mta-sts-cache FILE`), one JSON object: each domain's policy id,
//! when it was fetched (Unix seconds) and the policy as text; written whole to a temporary file
//! that is synced and renamed, so a crash leaves the old file or the new, never half of one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Policy;

/// One domain's policy as kept.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    fetched: u64,
    policy: Policy,
    /// When a route last used it (not kept in the file: a new process has used nothing).
    used: u64,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (&self.id, self.fetched, &self.policy) == (&other.id, other.fetched, &other.policy)
    }
}

impl Eq for Entry {}

impl Entry {
    fn valid(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }
}

/// What to do for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Use this policy (cached and current).
    Use(Policy),
    /// Fetch the policy; if that fails, `fallback` (a cached policy still valid) holds.
    Fetch { fallback: Option<Policy> },
    /// The domain has no policy.
    NoPolicy,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cache {
    entries: BTreeMap<String, Entry>,
}

/// The file's form.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    fetched: u64,
    policy: String,
}

impl Cache {
    /// What to do for `domain`, whose `_mta-sts` record names `id` (`None`: no such record),
    /// at `now` (Unix seconds).
    pub fn decide(&self, domain: &str, id: Option<&str>, now: u64) -> Decision {
        let cached = self.entries.get(&key(domain)).filter(|e| e.valid(now));
        match (id, cached) {
            (Some(id), Some(e)) if e.id == id => Decision::Use(e.policy.clone()),
            (Some(_), cached) => Decision::Fetch { fallback: cached.map(|e| e.policy.clone()) },
            // §5.1: no record, a policy still valid: it holds until it expires.
            (None, Some(e)) => Decision::Use(e.policy.clone()),
            (None, None) => Decision::NoPolicy,
        }
    }

    /// A policy fetched for `domain` under `id` at `now`, for a route (so in use).
    pub fn fetched(&mut self, domain: &str, id: &str, policy: Policy, now: u64) {
        self.entries.insert(key(domain), Entry { id: id.to_owned(), fetched: now, policy, used: now });
    }

    /// A policy fetched again in the background: in use as much as it was.
    pub fn refreshed(&mut self, domain: &str, id: &str, policy: Policy, now: u64) {
        let used = self.entries.get(&key(domain)).map_or(0, |e| e.used);
        self.entries.insert(key(domain), Entry { id: id.to_owned(), fetched: now, policy, used });
    }

    /// A route to `domain` keeps to its cached policy at `now`.
    pub fn used(&mut self, domain: &str, now: u64) {
        if let Some(e) = self.entries.get_mut(&key(domain)) {
            e.used = now;
        }
    }

    /// The domains whose policy is to be fetched again at `now`: still valid, past half its
    /// `max_age`, and used since it was fetched.
    pub fn to_refresh(&self, now: u64) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.valid(now) && e.used >= e.fetched && now >= e.fetched + e.policy.max_age / 2)
            .map(|(domain, _)| domain.clone())
            .collect()
    }

    /// How long to wait before looking for policies to refresh: a quarter of the shortest
    /// `max_age` kept, between a second and ten minutes.
    pub fn look_again_in(&self) -> u64 {
        let shortest = self.entries.values().map(|e| e.policy.max_age / 4).min().unwrap_or(600);
        shortest.clamp(1, 600)
    }

    /// Drops what has expired at `now`.
    pub fn expire(&mut self, now: u64) {
        self.entries.retain(|_, e| e.valid(now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads the file; a missing file is an empty cache, an entry whose policy no longer
    /// parses is dropped (it is fetched again), a file that is not the cache's is an error.
    pub fn load(path: &Path) -> std::io::Result<Cache> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cache::default()),
            Err(e) => return Err(e),
        };
        let stored: BTreeMap<String, Stored> = serde_json::from_str(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let entries = stored
            .into_iter()
            .filter_map(|(domain, s)| {
                let policy = Policy::parse(s.policy.as_bytes()).ok()?;
                Some((domain, Entry { id: s.id, fetched: s.fetched, policy, used: 0 }))
            })
            .collect();
        Ok(Cache { entries })
    }

    /// Writes the file whole: a temporary file beside it, synced, then renamed over it.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let stored: BTreeMap<&String, Stored> = self
            .entries
            .iter()
            .map(|(d, e)| (d, Stored { id: e.id.clone(), fetched: e.fetched, policy: e.policy.to_text() }))
            .collect();
        let text = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        crate::deliver::write_synced(path, &text)
    }
}

fn key(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::mta_sts::Mode;

    fn policy(mode: &str, max_age: u64) -> Policy {
        Policy::parse(
            format!("version: STSv1\nmode: {mode}\nmx: mx.a.test\nmx: *.b.test\nmax_age: {max_age}\n")
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_policy_is_used_until_it_expires_or_its_id_changes() {
        let mut cache = Cache::default();
        assert_eq!(cache.decide("a.test", None, 100), Decision::NoPolicy);
        assert_eq!(cache.decide("a.test", Some("1"), 100), Decision::Fetch { fallback: None });
        cache.fetched("A.test.", "1", policy("enforce", 1000), 100);
        assert_eq!(cache.decide("a.test", Some("1"), 500), Decision::Use(policy("enforce", 1000)));
        assert_eq!(
            cache.decide("a.test", Some("2"), 500),
            Decision::Fetch { fallback: Some(policy("enforce", 1000)) },
            "a new id asks for a fetch; if it fails, the valid one holds"
        );
        assert_eq!(
            cache.decide("a.test", None, 500),
            Decision::Use(policy("enforce", 1000)),
            "the record gone: the valid policy holds (no downgrade)"
        );
        assert_eq!(cache.decide("a.test", None, 1100), Decision::NoPolicy, "expired");
        assert_eq!(cache.decide("a.test", Some("1"), 1100), Decision::Fetch { fallback: None });
        cache.expire(1100);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_policy_in_use_is_refreshed_after_half_its_max_age_and_one_unused_is_not() {
        let mut cache = Cache::default();
        cache.fetched("a.test", "1", policy("enforce", 1000), 100);
        cache.fetched("b.test", "1", policy("enforce", 40), 100);
        assert_eq!(cache.look_again_in(), 10, "a quarter of the shortest max_age");
        assert!(cache.to_refresh(599).is_empty());
        assert_eq!(cache.to_refresh(600), ["a.test"], "b.test has expired");
        // Refreshed: valid for a new max_age, and not again until a route uses it.
        cache.refreshed("a.test", "1", policy("enforce", 1000), 600);
        assert!(cache.to_refresh(1200).is_empty());
        assert_eq!(cache.decide("a.test", Some("1"), 1500), Decision::Use(policy("enforce", 1000)));
        cache.used("a.test", 1500);
        assert_eq!(cache.to_refresh(1500), ["a.test"]);
        // A policy read from the file has not been used by this process.
        let mut fresh = Cache::default();
        fresh.entries.insert("c.test".into(), Entry { used: 0, ..cache.entries["a.test"].clone() });
        assert!(fresh.to_refresh(1500).is_empty());
        assert_eq!(Cache::default().look_again_in(), 600);
        cache.fetched("d.test", "1", policy("enforce", 1), 100);
        assert_eq!(cache.look_again_in(), 1);
    }

    #[test]
    fn the_file_keeps_policies_across_runs() {
        let dir = std::env::temp_dir().join(format!("volley-sts-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mta-sts.json");
        let _ = std::fs::remove_file(&path);
        assert!(Cache::load(&path).unwrap().is_empty(), "no file: an empty cache");
        let mut cache = Cache::default();
        cache.fetched("a.test", "20160831085700Z", policy("enforce", 86_400), 1_000);
        cache.fetched("c.test", "x", policy("testing", 60), 1_000);
        cache.save(&path).unwrap();
        let back = Cache::load(&path).unwrap();
        assert_eq!(back, cache);
        assert_eq!(
            back.decide("a.test", Some("20160831085700Z"), 2_000),
            Decision::Use(policy("enforce", 86_400))
        );
        assert!(!dir.join("mta-sts.json.tmp").exists());
        std::fs::write(&path, "not json").unwrap();
        assert!(Cache::load(&path).is_err(), "a file that is not the cache is an error, not an empty cache");
        std::fs::write(&path, r#"{"a.test": {"id": "1", "fetched": 1, "policy": "garbage"}}"#).unwrap();
        assert!(Cache::load(&path).unwrap().is_empty(), "an entry that no longer parses is fetched again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_policy_written_as_text_reads_back_the_same() {
        for p in [
            policy("enforce", 604_800),
            policy("testing", 1),
            Policy { mode: Mode::None, mx: vec![], max_age: 5 },
        ] {
            assert_eq!(Policy::parse(p.to_text().as_bytes()).unwrap(), p);
        }
    }
}
