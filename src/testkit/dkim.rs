//! DKIM verification for tests: mail-auth's verifier, with the public keys given as the TXT
//! records a receiver would find in DNS, so no query leaves the process.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, MessageAuthenticator, Parameters, ResolverCache, Txt};

pub use mail_auth::DkimResult;

/// The TXT records, by name (with the root's trailing dot, as mail-auth asks).
struct Records(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// Verifies every DKIM signature of `message` against `records` (`(name, TXT)`, e.g.
/// `("s1._domainkey.example.com", "v=DKIM1; k=rsa; p=...")`): one result per signature, in
/// the message's order. A record that does not parse is a test's own mistake: it panics.
pub fn verify<'a>(records: impl IntoIterator<Item = (String, &'a str)>, message: &[u8]) -> Vec<DkimResult> {
    let records = Records(
        records
            .into_iter()
            .map(|(name, txt)| {
                let key = DomainKey::parse(txt.as_bytes()).expect("a DKIM key record");
                (format!("{name}.").into_boxed_str(), Txt::DomainKey(Arc::new(key)))
            })
            .collect(),
    );
    let Some(parsed) = AuthenticatedMessage::parse(message) else { return Vec::new() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    rt.block_on(async {
        // No name servers: the records above answer every lookup the verifier makes.
        let auth =
            MessageAuthenticator::new(ResolverConfig::from_name_servers(Vec::new()), ResolverOpts::default())
                .expect("a resolver");
        let out = auth.verify_dkim(Parameters::new(&parsed).with_txt_cache(&records)).await;
        out.iter().map(|o| o.result().clone()).collect()
    })
}
