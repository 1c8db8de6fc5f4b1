//! Bounce classification: why a recipient was deferred or bounced, in one of a few categories
//! a sender acts on (remove the address, fix authentication, slow down, ...).
//!
//! The order (see `bounce_rules.toml`, shipped in the binary): a specific enhanced status code
//! (RFC 3463 and the IANA registry) decides alone; generic codes and replies without one go to
//! the text rules, the user's (`--bounce-rules FILE`) before the shipped ones, first match
//! winning; then the enhanced code's class, the basic code, and whether there was a reply at
//! all. It runs on the log thread, only for failures.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rules_file::{self, RulesError};

use crate::proto::client::LocalError;
use crate::proto::pattern::ReplyPattern;
use crate::proto::reply::EnhancedCode;

/// The shipped rules.
const SHIPPED: &str = include_str!("bounce_rules.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    InvalidRecipient,
    BadDomain,
    MailboxFull,
    TooLarge,
    SpamBlock,
    Policy,
    RateLimited,
    TlsRequired,
    /// The address has a non-ASCII local part and the server does not offer SMTPUTF8.
    NeedsSmtputf8,
    /// The message is 8-bit and the server does not offer 8BITMIME.
    #[serde(rename = "needs_8bitmime")]
    Needs8BitMime,
    Connection,
    /// An operator's action: a recipient bounced from the queue (`volley queue bounce`), or
    /// one whose destination stayed suspended past its maximum age.
    Admin,
    Other,
}

impl Category {
    pub const ALL: [Category; 13] = [
        Category::InvalidRecipient,
        Category::BadDomain,
        Category::MailboxFull,
        Category::TooLarge,
        Category::SpamBlock,
        Category::Policy,
        Category::RateLimited,
        Category::TlsRequired,
        Category::NeedsSmtputf8,
        Category::Needs8BitMime,
        Category::Connection,
        Category::Admin,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "invalid_recipient",
            Category::BadDomain => "bad_domain",
            Category::MailboxFull => "mailbox_full",
            Category::TooLarge => "too_large",
            Category::SpamBlock => "spam_block",
            Category::Policy => "policy",
            Category::RateLimited => "rate_limited",
            Category::TlsRequired => "tls_required",
            Category::NeedsSmtputf8 => "needs_smtputf8",
            Category::Needs8BitMime => "needs_8bitmime",
            Category::Connection => "connection",
            Category::Admin => "admin",
            Category::Other => "other",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    category: Category,
    #[serde(flatten)]
    pattern: ReplyPattern,
}

/// What the classifier is given: a reply's codes and text, or the reason there was none.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub code: Option<u16>,
    pub enhanced: Option<EnhancedCode>,
    /// The reply text, or what went wrong without a reply.
    pub text: &'a str,
}

/// The failure categories' rules. They can be replaced while the log thread classifies
/// (serve's SIGHUP), without a lock.
#[derive(Debug)]
pub struct Classifier {
    rules: arc_swap::ArcSwap<Vec<Rule>>,
}

impl Classifier {
    /// The shipped rules after the rules of each file in `extra` (in order).
    pub fn load(extra: &[impl AsRef<Path>]) -> Result<Classifier, RulesError> {
        let mut rules = Vec::new();
        rules_file::load("bounce rules", extra, Some(SHIPPED), |text| {
            rules.extend(parse(text)?);
            Ok(())
        })?;
        Ok(Classifier { rules: arc_swap::ArcSwap::from_pointee(rules) })
    }

    /// From now on, `with`'s rules instead.
    pub fn replace(&self, with: Classifier) {
        self.rules.store(with.rules.load_full());
    }

    pub fn classify(&self, f: Failure<'_>) -> Category {
        let category = self.by_rules(f);
        // A transient reply cannot make an address or a domain invalid: the server says to try
        // again (greylisting, a lookup that failed, a soft-bounce setting), and a sender acting
        // on `invalid_recipient` removes the address.
        let transient =
            f.code.map_or(f.enhanced.is_some_and(|e| e.class == 4), |code| (400..500).contains(&code));
        match category {
            Category::InvalidRecipient | Category::BadDomain if transient => Category::Other,
            category => category,
        }
    }

    fn by_rules(&self, f: Failure<'_>) -> Category {
        if let Some(category) = f.enhanced.and_then(specific) {
            return category;
        }
        let text = f.text.to_lowercase();
        if let Some(rule) = self.rules.load().iter().find(|r| r.pattern.matches(f.code, f.enhanced, &text)) {
            return rule.category;
        }
        if let Some(category) = f.enhanced.and_then(by_class) {
            return category;
        }
        match f.code {
            Some(552) => Category::MailboxFull,
            Some(_) => Category::Other,
            // No reply: the connection or the session failed.
            None => Category::Connection,
        }
    }
}

impl Default for Classifier {
    fn default() -> Self {
        let rules = parse(SHIPPED).unwrap_or_default();
        Classifier { rules: arc_swap::ArcSwap::from_pointee(rules) }
    }
}

fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(file.rule.into_iter().map(|r| Rule { pattern: r.pattern.normalise(), ..r }).collect())
}

/// A category the enhanced code alone decides (RFC 3463, RFC 5248's registry, RFC 7372,
/// RFC 7505, RFC 8689). Generic details (X.Y.0, X.7.1) say nothing certain: `None`.
fn specific(e: EnhancedCode) -> Option<Category> {
    use Category::*;
    Some(match (e.subject, e.detail) {
        (1, 1 | 3 | 4 | 6) => InvalidRecipient,
        // X.1.10 is RFC 7505's null MX, but Microsoft answers it for an unknown recipient:
        // the text decides.
        (1, 2) => BadDomain,
        // Gmail answers 4.2.1 for a mailbox receiving too fast: only a 5.2.1 is a disabled one.
        (2, 1) if e.class == 5 => InvalidRecipient,
        (2, 2) | (3, 1) => MailboxFull,
        (2, 3) | (3, 4) => TooLarge,
        // X.4.1 is "no answer from host", but Microsoft answers 5.4.1 "Recipient address
        // rejected: Access denied" for an unknown recipient: the text decides.
        (4, 2 | 3) | (4, 7) => Connection,
        (4, 4) => BadDomain,
        (4, 5) => RateLimited,
        (7, 10 | 11 | 30) => TlsRequired,
        (7, 13) => InvalidRecipient,
        (7, 8 | 9 | 14 | 20..=27 | 29) => Policy,
        (7, 28) => RateLimited,
        _ => return None,
    })
}

/// The category of an enhanced code's subject, when no rule said more.
fn by_class(e: EnhancedCode) -> Option<Category> {
    Some(match e.subject {
        1 => Category::InvalidRecipient,
        2 => Category::InvalidRecipient,
        3 => Category::Other,
        4 => Category::Connection,
        6 => Category::Other,
        7 => Category::Policy,
        _ => return None,
    })
}

/// The category of a message this server could not be sent, decided before sending it.
pub fn of_local(refusal: &LocalError) -> Category {
    match refusal {
        LocalError::TooLarge { .. } => Category::TooLarge,
        LocalError::Utf8NotSupported => Category::NeedsSmtputf8,
        LocalError::EightBitNotSupported => Category::Needs8BitMime,
        LocalError::NoRecipients => Category::Other,
    }
}

/// Counts by category.
pub type Counts = BTreeMap<Category, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: &str, text: &'static str) -> Failure<'static> {
        let enhanced = EnhancedCode::parse_prefix(enhanced.as_bytes()).map(|(e, _)| e);
        Failure { code: Some(code), enhanced, text }
    }

    #[test]
    fn real_replies_get_their_category() {
        use Category::*;
        let c = Classifier::default();
        let cases = [
            (
                reply(550, "5.1.1", "The email account that you tried to reach does not exist."),
                InvalidRecipient,
            ),
            (reply(550, "5.1.1", "blocked for spam"), InvalidRecipient), // the specific code decides
            (
                reply(
                    550,
                    "5.1.10",
                    "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                ),
                InvalidRecipient,
            ),
            (reply(552, "5.2.2", "The email account that you tried to reach is over quota."), MailboxFull),
            (reply(552, "5.3.4", "Message size exceeds fixed maximum message size"), TooLarge),
            (
                reply(
                    421,
                    "4.7.0",
                    "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
                ),
                RateLimited,
            ),
            (
                reply(421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail"),
                RateLimited,
            ),
            (
                reply(550, "5.7.26", "This mail has been blocked because the sender is unauthenticated."),
                Policy,
            ),
            (
                reply(
                    550,
                    "5.7.1",
                    "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
                ),
                SpamBlock,
            ),
            (reply(554, "5.7.1", "Message rejected because of SPF fail"), Policy),
            (reply(530, "5.7.0", "Must issue a STARTTLS command first."), TlsRequired),
            (reply(550, "", "Requested action not taken: mailbox unavailable"), InvalidRecipient),
            (reply(554, "", "Message rejected as spam by Content Filtering."), SpamBlock),
            (
                reply(
                    450,
                    "4.2.1",
                    "The user you are trying to contact is receiving mail at a rate that prevents additional messages",
                ),
                RateLimited,
            ),
            (reply(451, "4.7.1", "Greylisted, please retry"), Policy),
            (reply(552, "", "Requested mail action aborted"), MailboxFull),
            (reply(554, "", "Transaction failed"), Other),
            (reply(451, "4.3.0", "Temporary local problem"), Other),
            (
                Failure {
                    code: None,
                    enhanced: None,
                    text: "127.0.0.9:25: Connection refused (os error 111)",
                },
                Connection,
            ),
            (
                Failure {
                    code: None,
                    enhanced: None,
                    text: "the server offers no STARTTLS and --starttls required",
                },
                TlsRequired,
            ),
            (Failure { code: None, enhanced: None, text: "x.test does not exist (NXDOMAIN)" }, BadDomain),
            (
                Failure { code: None, enhanced: None, text: "x.test accepts no mail (null MX, RFC 7505)" },
                BadDomain,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(c.classify(f), want, "{f:?}");
        }
    }

    /// Replies as real servers word them, 4xx and 5xx, with where each comes from (see the
    /// sources at the top of `bounce_rules.toml`). The rule this table guards above all: a
    /// transient reply never makes an address invalid.
    #[test]
    fn real_servers_replies_4xx_and_5xx() {
        use Category::*;
        let c = Classifier::default();
        #[rustfmt::skip]
        let cases: &[(&str, u16, &str, &str, Category)] = &[
            // Postfix smtpd (local_recipient_maps, reject_unauth_destination, RBLs, error limits).
            ("postfix", 550, "5.1.1", "<ann@d.test>: Recipient address rejected: User unknown in local recipient table", InvalidRecipient),
            ("postfix soft_bounce", 450, "4.1.1", "<ann@d.test>: Recipient address rejected: User unknown in local recipient table", Other),
            ("postfix", 554, "5.7.1", "<ann@d.test>: Relay access denied", Policy),
            ("postfix", 554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1", SpamBlock),
            ("postfix", 450, "4.7.1", "Client host rejected: cannot find your reverse hostname, [192.0.2.1]", Policy),
            ("postfix", 421, "4.7.0", "mx.d.test Error: too many errors", RateLimited),
            ("postfix", 554, "5.5.1", "Error: no valid recipients", Other),
            ("postfix", 452, "4.5.3", "Error: too many recipients", RateLimited),
            ("postfix", 552, "5.3.4", "Message size exceeds fixed limit", TooLarge),
            ("postfix", 450, "4.1.2", "<ann@d.test>: Recipient address rejected: Domain not found", Other),
            ("postfix", 550, "5.1.2", "<ann@nowhere.test>: Recipient address rejected: Domain not found", BadDomain),
            // postgrey, policyd-spf, policyd-rate-limit (Postfix policy services).
            ("postgrey", 450, "4.2.0", "<ann@d.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/d.test.html", Policy),
            ("policyd-spf", 550, "5.7.23", "<ann@d.test>: Recipient address rejected: Message rejected due to: SPF fail - not authorized", Policy),
            ("policyd-rate-limit", 450, "4.7.1", "<ann@d.test>: Recipient address rejected: Rate limit reach, retry later", RateLimited),
            // Exim.
            ("exim", 550, "", "Unrouteable address", InvalidRecipient),
            ("exim", 451, "", "Temporary local problem - please try later", Other),
            ("exim", 451, "", "Sender rate overlimit - 120.0 / 1h", RateLimited),
            ("exim", 451, "", "Could not complete sender verify", Policy),
            // Exchange Online / Office 365.
            ("exchange", 550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", InvalidRecipient),
            ("exchange", 550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281) [x.prod.outlook.com]", InvalidRecipient),
            ("exchange", 451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]. (S77719)", RateLimited),
            ("exchange", 554, "5.2.2", "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", MailboxFull),
            // Microsoft consumer (outlook.com, hotmail.com).
            ("outlook.com", 550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302)", InvalidRecipient),
            ("outlook.com", 421, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. (S775)", RateLimited),
            ("outlook.com", 451, "4.7.652", "The mail server [192.0.2.1] has exceeded the maximum number of connections. (S3115)", RateLimited),
            ("outlook.com", 550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", SpamBlock),
            // Gmail.
            ("gmail", 550, "5.1.1", "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address", InvalidRecipient),
            ("gmail", 550, "5.2.1", "The email account that you tried to reach is disabled.", InvalidRecipient),
            ("gmail", 452, "4.2.2", "The email account that you tried to reach is over quota.", MailboxFull),
            ("gmail", 450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.", RateLimited),
            ("gmail", 421, "4.7.0", "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address.", RateLimited),
            ("gmail", 550, "5.7.26", "This mail has been blocked because the sender is unauthenticated.", Policy),
            ("gmail", 451, "4.3.0", "Mail server temporarily rejected message.", Other),
            // Yahoo.
            ("yahoo", 421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints", RateLimited),
            ("yahoo", 554, "5.7.9", "Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes", Policy),
            ("yahoo", 552, "", "1 Requested mail action aborted, mailbox not found", InvalidRecipient),
            ("yahoo", 451, "", "Message temporarily deferred - [160]", RateLimited),
        ];
        for &(who, code, enhanced, text, want) in cases {
            let f = reply(code, enhanced, text);
            assert_eq!(c.classify(f), want, "{who}: {code} {enhanced} {text}");
            if code < 500 {
                assert!(!matches!(c.classify(f), InvalidRecipient | BadDomain), "{who}: transient");
            }
        }
        assert!(cases.iter().any(|c| c.1 < 500) && cases.iter().any(|c| c.1 >= 500));
    }

    #[test]
    fn user_rules_come_first_and_bad_files_say_where() {
        let dir = std::env::temp_dir().join(format!("volley-bounce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = dir.join("mine.toml");
        std::fs::write(&mine, "[[rule]]\ncategory = \"other\"\ncode = 554\ntext = [\"spam\"]\n").unwrap();
        let c = Classifier::load(&[&mine]).unwrap();
        assert_eq!(c.classify(reply(554, "", "looks like spam")), Category::Other);
        assert_eq!(
            c.classify(reply(550, "", "looks like spam")),
            Category::SpamBlock,
            "the shipped rule still holds"
        );
        for bad in [
            "[[rule]]\ncategory = \"nonsense\"\n",
            "[[rule]]\ncategory = \"other\"\ncode = \"4x\"\n",
            "[[rule]]\ncategory = \"other\"\nenhanced = \"9.9\"\n",
            "[[rule]]\ncategory = \"other\"\ntxt = [\"typo\"]\n",
            "not toml",
        ] {
            std::fs::write(&mine, bad).unwrap();
            let err = Classifier::load(&[&mine]).unwrap_err().to_string();
            assert!(err.contains("mine.toml"), "{bad:?}: {err}");
        }
        assert!(matches!(Classifier::load(&[dir.join("missing")]), Err(RulesError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rules_are_replaced_in_place() {
        let replaced = Classifier::load(&[] as &[&str]).unwrap();
        let text = "554 5.7.1 Injected failure";
        let failure = Failure { code: Some(554), enhanced: None, text };
        assert_ne!(replaced.classify(failure), Category::SpamBlock);
        let rules = parse("[[rule]]\ncategory = \"spam_block\"\ntext = [\"injected\"]\n").unwrap();
        replaced.replace(Classifier { rules: arc_swap::ArcSwap::from_pointee(rules) });
        assert_eq!(replaced.classify(failure), Category::SpamBlock, "replaced in place");
    }

    #[test]
    fn the_shipped_rules_parse_and_every_category_has_a_name() {
        assert!(parse(SHIPPED).unwrap().len() >= 9);
        for c in Category::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
