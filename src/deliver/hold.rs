//! Recipients an operator holds back: a [`Selector`] names a destination, a recipient domain or
//! an MX host (`volley queue suspend DEST`), and [`Holds`] says, when a recipient is routed,
//! whether it may go. Asked by `dispatch` on the producer's thread, never by a core; with no
//! hold in force that is one test of an empty list.

use std::time::Instant;

use super::lowercase;
use crate::engine::Destination;

/// What an operator names: a recipient domain, a destination (by the name reports give it) or
/// one of a destination's MX hosts (or the relay), compared without case or a final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a domain, destination or host name")]
pub struct BadSelector(String);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, BadSelector> {
        let name = text.trim().trim_end_matches('.');
        // A destination's name may list its hosts (`mx1.x, mx2.x`) or carry a rule (`[gmail]`),
        // so commas, spaces and brackets pass; nothing that could not be in a report does.
        let fits = |c: char| c.is_alphanumeric() || "-._:, []()+#".contains(c);
        if name.is_empty() || name.len() > 255 || !name.chars().all(fits) {
            return Err(BadSelector(text.chars().take(64).collect()));
        }
        Ok(Selector(name.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it names `domain` itself (lower-case).
    pub fn is_domain(&self, domain: &str) -> bool {
        self.0 == domain
    }

    /// Whether it names `destination` or one of its hosts.
    pub fn names(&self, destination: &Destination) -> bool {
        self.names_by(&destination.name, destination.hosts.iter().map(|h| &**h))
    }

    /// Whether it names a destination called `name` with these hosts (as a report shows
    /// them).
    pub fn names_by<'h>(&self, name: &str, mut hosts: impl Iterator<Item = &'h str>) -> bool {
        lowercase(name) == self.0 || hosts.any(|h| lowercase(h.trim_end_matches('.')) == self.0)
    }

    /// Whether a recipient of `domain` (lower-case), routed to `destination`, is named.
    pub fn matches(&self, domain: &str, destination: &Destination) -> bool {
        self.is_domain(domain) || self.names(destination)
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One hold: what it names, and until when (`None`: until lifted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub selector: Selector,
    pub until: Option<Instant>,
}

/// The holds in force.
#[derive(Debug, Clone, Default)]
pub struct Holds(Vec<Hold>);

impl Holds {
    pub fn new(holds: Vec<Hold>) -> Holds {
        Holds(holds)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a recipient of `domain`, routed to `destination`, is held at `now`, and until
    /// when (`Some(None)`: until lifted). Of several holds, the longest.
    pub fn holding(&self, domain: &str, destination: &Destination, now: Instant) -> Option<Option<Instant>> {
        let mut found: Option<Option<Instant>> = None;
        for hold in &self.0 {
            if hold.until.is_some_and(|until| until <= now) || !hold.selector.matches(domain, destination) {
                continue;
            }
            found = Some(match (found, hold.until) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn destination() -> Destination {
        let addrs = vec!["127.0.0.2:25".parse().unwrap(), "127.0.0.3:25".parse().unwrap()];
        Destination::new(0, "mx1.big.test, mx2.big.test", addrs, 1)
            .with_hosts(vec![Arc::from("mx1.big.test"), Arc::from("MX2.Big.Test.")])
    }

    #[test]
    fn a_selector_names_a_domain_a_destination_or_one_of_its_hosts() {
        let d = destination();
        let named = |s: &str| Selector::parse(s).unwrap().matches("a.test", &d);
        assert!(named("a.test") && named("A.Test."), "the recipient's domain, any case, a final dot");
        assert!(named("mx1.big.test, mx2.big.test"), "the destination, as reports name it");
        assert!(named("mx2.big.test"), "one of its hosts, as DNS spelled it");
        assert!(!named("b.test") && !named("big.test") && !named("mx1.big"), "nothing by part");
        for bad in ["", " . ", "a/b", "a\nb", &"x".repeat(256)] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_longest_hold_in_force_applies_and_ended_ones_do_not() {
        let d = destination();
        let t0 = Instant::now();
        let at = |s| Some(t0 + Duration::from_secs(s));
        let hold = |s: &str, until| Hold { selector: Selector::parse(s).unwrap(), until };
        let holds =
            Holds::new(vec![hold("a.test", at(10)), hold("mx1.big.test", at(60)), hold("c.test", None)]);
        assert_eq!(holds.holding("a.test", &d, t0), Some(at(60)), "both name it: the later end");
        assert_eq!(holds.holding("a.test", &d, t0 + Duration::from_secs(30)), Some(at(60)));
        assert_eq!(holds.holding("a.test", &d, t0 + Duration::from_secs(60)), None, "both over");
        assert_eq!(holds.holding("c.test", &d, t0), Some(None), "c.test's has no end, whatever its host's");
        let other = Destination::new(1, "mx.other.test", vec![], 1);
        assert_eq!(holds.holding("c.test", &other, t0 + Duration::from_secs(99)), Some(None), "until lifted");
        assert_eq!(holds.holding("b.test", &other, t0), None);
        assert!(Holds::default().holding("a.test", &d, t0).is_none());
    }
}
