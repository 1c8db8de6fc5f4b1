//! `send`'s traffic shaping rules: limits per destination, matched by MX host suffix or
//! recipient domain, and reactions to replies. The shipped rules (`shaping.toml`, with their
//! sources) come after the user's files, so a user's rule wins; the engine enforces them
//! (see [`crate::engine::shaping`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::rules_file::{self, RulesError};
use crate::engine::{Action, Limits, Rate, Reaction, Reactions};
use crate::proto::pattern::ReplyPattern;

const SHIPPED: &str = include_str!("shaping.toml");
/// What these rules are called in errors.
const KIND: &str = "shaping rules";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    destination: Vec<DestinationRule>,
    #[serde(default)]
    reaction: Vec<ReactionRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationRule {
    name: String,
    #[serde(default)]
    mx: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    connections: Option<usize>,
    messages_per_connection: Option<u64>,
    rate: Option<Rate>,
    connection_rate: Option<Rate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionRule {
    name: String,
    action: ActionName,
    #[serde(rename = "for", deserialize_with = "duration")]
    duration: Duration,
    rate: Option<Rate>,
    connections: Option<usize>,
    /// Only for destinations these destination rules matched.
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(flatten)]
    pattern: ReplyPattern,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActionName {
    Suspend,
    Slow,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}

/// The limits every destination gets unless a rule says otherwise (the command line's).
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub connections: usize,
    pub limits: Limits,
}

/// A destination rule that matched: its name and the limits it makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    pub rule: Option<Arc<str>>,
    pub connections: usize,
    pub limits: Limits,
    /// Matched by recipient domain: the domain gets a destination of its own.
    pub by_domain: bool,
}

#[derive(Debug, Clone)]
pub struct ShapingRules {
    defaults: Defaults,
    destinations: Vec<DestinationRule>,
    reactions: Vec<Reaction>,
}

impl ShapingRules {
    /// The rules of each file in `extra` (in order), then the shipped ones unless `shipped`
    /// is false.
    pub fn load(extra: &[PathBuf], shipped: bool, defaults: Defaults) -> Result<ShapingRules, RulesError> {
        let mut shaping = ShapingRules { defaults, destinations: Vec::new(), reactions: Vec::new() };
        rules_file::load(KIND, extra, shipped.then_some(SHIPPED), |text| shaping.add_text(text))?;
        Ok(shaping)
    }

    /// Adds the rules of `text`, read from `path`.
    #[cfg(test)]
    pub(crate) fn add(&mut self, text: &str, path: &std::path::Path) -> Result<(), RulesError> {
        rules_file::parsed(KIND, path, self.add_text(text))
    }

    fn add_text(&mut self, text: &str) -> Result<(), String> {
        let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for mut rule in file.destination {
            if rule.mx.is_empty() && rule.domains.is_empty() {
                return Err(format!("destination `{}`: give `mx` suffixes or `domains`", rule.name));
            }
            if rule.connections == Some(0) || rule.messages_per_connection == Some(0) {
                return Err(format!("destination `{}`: limits must be at least 1", rule.name));
            }
            for name in rule.mx.iter_mut().chain(rule.domains.iter_mut()) {
                *name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            }
            self.destinations.push(rule);
        }
        for rule in file.reaction {
            let action = match rule.action {
                ActionName::Suspend if rule.rate.is_some() || rule.connections.is_some() => {
                    return Err(format!("reaction `{}`: `suspend` takes no rate or connections", rule.name));
                }
                ActionName::Suspend => Action::Suspend,
                ActionName::Slow if rule.rate.is_none() && rule.connections.is_none() => {
                    return Err(format!(
                        "reaction `{}`: `slow` needs a rate, connections or both",
                        rule.name
                    ));
                }
                ActionName::Slow => Action::Slow { rate: rule.rate, connections: rule.connections },
            };
            let pattern = rule.pattern.normalise();
            if pattern == ReplyPattern::default() {
                return Err(format!("reaction `{}`: give a code, enhanced code or text", rule.name));
            }
            if rule.duration.is_zero() {
                return Err(format!("reaction `{}`: `for` must be longer than zero", rule.name));
            }
            let only = rule.destinations.iter().map(|d| Arc::<str>::from(d.as_str())).collect();
            self.reactions.push(Reaction {
                name: rule.name.into(),
                pattern,
                action,
                duration: rule.duration,
                only,
            });
        }
        Ok(())
    }

    /// The engine's reactions, none if there are no rules.
    pub fn reactions(&self) -> Option<Arc<Reactions>> {
        (!self.reactions.is_empty()).then(|| Arc::new(Reactions::new(self.reactions.clone())))
    }

    /// The reactions' rules, to replace those of a run (serve's SIGHUP).
    pub fn reaction_rules(&self) -> Vec<super::super::engine::Reaction> {
        self.reactions.clone()
    }

    /// The limits of the destination for `domain`'s MX hosts (or the relay's name).
    pub fn limits(&self, domain: Option<&str>, hosts: &[&str]) -> Shaped {
        let by_domain =
            |r: &DestinationRule| domain.is_some_and(|d| r.domains.iter().any(|want| matches_name(d, want)));
        let by_mx = |r: &DestinationRule| {
            hosts.iter().any(|h| {
                let h = h.trim_end_matches('.');
                r.mx.iter().any(|suffix| ends_with_ignore_case(h, suffix))
            })
        };
        let rule = self.destinations.iter().find(|r| by_domain(r) || by_mx(r));
        let d = &self.defaults;
        match rule {
            None => {
                Shaped { rule: None, connections: d.connections, limits: d.limits.clone(), by_domain: false }
            }
            Some(r) => Shaped {
                rule: Some(r.name.as_str().into()),
                connections: r.connections.unwrap_or(d.connections),
                limits: Limits {
                    messages_per_connection: r.messages_per_connection.or(d.limits.messages_per_connection),
                    rate: r.rate.or(d.limits.rate),
                    connection_rate: r.connection_rate.or(d.limits.connection_rate),
                },
                by_domain: by_domain(r),
            },
        }
    }
}

/// `domain` is `want`, or with a leading dot, a subdomain of it.
fn matches_name(domain: &str, want: &str) -> bool {
    match want.strip_prefix('.') {
        Some(parent) => domain.len() > parent.len() && ends_with_ignore_case(domain, want),
        None => domain.eq_ignore_ascii_case(want),
    }
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.is_char_boundary(name.len() - suffix.len())
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Reply;
    use std::path::Path;

    fn defaults() -> Defaults {
        Defaults {
            connections: 10,
            limits: Limits { messages_per_connection: Some(100), rate: None, connection_rate: None },
        }
    }

    fn with(text: &str, shipped: bool) -> Result<ShapingRules, RulesError> {
        let mut s = ShapingRules::load(&[], false, defaults())?;
        s.add(text, Path::new("rules.toml"))?;
        if shipped {
            s.add(SHIPPED, Path::new("(shipped)"))?;
        }
        Ok(s)
    }

    #[test]
    fn the_shipped_rules_load_and_match_the_large_providers() {
        let s = ShapingRules::load(&[], true, defaults()).unwrap();
        // MX hosts, the rule that should match, its connections and messages per connection.
        type Case<'a> = (&'a [&'a str], Option<&'a str>, usize, Option<u64>);
        let cases: [Case; 6] = [
            (&["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"], Some("google"), 5, Some(50)),
            (&["ASPMX.L.GOOGLE.COM."], Some("google"), 5, Some(50)),
            (&["mta5.am0.yahoodns.net"], Some("yahoo"), 10, Some(20)),
            (&["example-com.mail.protection.outlook.com"], Some("office365"), 5, Some(50)),
            (&["mx01.mail.icloud.com"], Some("apple"), 10, Some(5)),
            (&["mx.example.net", "notgoogle.com"], None, 10, Some(100)),
        ];
        for (hosts, rule, connections, per_conn) in cases {
            let got = s.limits(Some("x.test"), hosts);
            assert_eq!(got.rule.as_deref(), rule, "{hosts:?}");
            assert_eq!(
                (got.connections, got.limits.messages_per_connection),
                (connections, per_conn),
                "{hosts:?}"
            );
            assert!(!got.by_domain);
        }
        let reactions = s.reactions().unwrap();
        let tss04 = Reply::new(
            421,
            None,
            "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
        );
        let rule = reactions.find(&tss04, Some("yahoo")).unwrap();
        assert_eq!((&*rule.name, &rule.action), ("yahoo-tss04", &Action::Suspend));
        let ms = Reply::new(
            451,
            None,
            "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
        );
        assert_eq!(&*reactions.find(&ms, None).unwrap().name, "reputation-throttle");
        let greylist = Reply::new(451, None, "4.7.1 Greylisted, please try again later");
        assert!(reactions.find(&greylist, None).is_none(), "greylisting is not throttling");
        assert!(ShapingRules::load(&[], false, defaults()).unwrap().reactions().is_none());
    }

    #[test]
    fn user_rules_come_first_and_domain_rules_set_domains_apart() {
        let s = with(
            r#"
            [[destination]]
            name = "mine"
            domains = ["example.com", ".corp.example"]
            rate = "120/min"
            [[destination]]
            name = "google-slower"
            mx = [".google.com"]
            connections = 2
            [[reaction]]
            name = "quick"
            code = 421
            text = ["slow down"]
            action = "slow"
            rate = "10/s"
            for = "30s"
            destinations = ["mine"]
            "#,
            true,
        )
        .unwrap();
        let google = s.limits(Some("gmail.com"), &["gmail-smtp-in.l.google.com"]);
        assert_eq!((google.rule.as_deref(), google.connections), (Some("google-slower"), 2));
        assert_eq!(google.limits.messages_per_connection, Some(100), "the user's rule keeps the default");
        let mine = s.limits(Some("example.com"), &["aspmx.l.google.com"]);
        assert_eq!(mine.rule.as_deref(), Some("mine"));
        assert!(mine.by_domain && mine.limits.rate == Some("120/min".parse().unwrap()));
        assert!(s.limits(Some("a.corp.example"), &[]).by_domain);
        assert!(s.limits(Some("corp.example"), &[]).rule.is_none(), "a leading dot: subdomains only");
        let r = s.reactions().unwrap();
        let reply = Reply::new(421, None, "Slow down please");
        assert_eq!(r.find(&reply, Some("mine")).map(|x| x.name), Some("quick".into()));
        assert!(r.find(&reply, Some("google-slower")).is_none(), "scoped to its destinations");
        assert!(r.find(&reply, None).is_none());
    }

    #[test]
    fn bad_rules_are_refused_with_the_file_and_the_reason() {
        let cases = [
            ("[[destination]]\nname = \"x\"\nrate = \"5/s\"", "give `mx` suffixes or `domains`"),
            ("[[destination]]\nname = \"x\"\nmx = [\".a\"]\nrate = \"5/fortnight\"", "COUNT/UNIT"),
            ("[[destination]]\nname = \"x\"\nmx = [\".a\"]\nconnections = 0", "at least 1"),
            ("[[destination]]\nname = \"x\"\nmx = [\".a\"]\nspeed = 3", "unknown field"),
            ("[[reaction]]\nname = \"r\"\ntext = [\"a\"]\naction = \"slow\"\nfor = \"1m\"", "needs a rate"),
            (
                "[[reaction]]\nname = \"r\"\ntext = [\"a\"]\naction = \"suspend\"\nrate = \"1/s\"\nfor = \"1m\"",
                "takes no rate",
            ),
            ("[[reaction]]\nname = \"r\"\naction = \"suspend\"\nfor = \"1m\"", "give a code"),
            ("[[reaction]]\nname = \"r\"\ncode = 421\naction = \"pause\"\nfor = \"1m\"", "unknown variant"),
            ("[[reaction]]\nname = \"r\"\ncode = 421\naction = \"suspend\"\nfor = \"soon\"", "`soon`"),
            (
                "[[reaction]]\nname = \"r\"\ncode = 421\naction = \"suspend\"\nfor = \"0s\"",
                "longer than zero",
            ),
        ];
        for (text, want) in cases {
            let e = with(text, false).unwrap_err().to_string();
            assert!(e.contains("rules.toml") && e.contains(want), "{text:?}: {e}");
        }
        let missing = ShapingRules::load(&[PathBuf::from("/nonexistent/rules.toml")], false, defaults());
        assert!(matches!(missing, Err(RulesError::Read { .. })));
    }
}
