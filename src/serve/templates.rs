//! Compiled message templates kept for the requests that bring the same content again. An
//! application sends the same password-reset or receipt template all day, and compiling it
//! (minijinja's environment, the raw message's fast-path plan) cost more than the rest of an
//! HTTP request; a request's own ids are given when rendering
//! ([`MessageTemplate::render_as`]), so one compiled template serves them all.
//!
//! Bounded: at most [`ENTRIES`] templates, the oldest forgotten first, and a content larger
//! than [`LARGEST`] octets is compiled for its request alone.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::hash::FxMap;
use crate::send::template::{MessageSpec, MessageTemplate, TemplateError};

/// Templates kept.
pub const ENTRIES: usize = 128;
/// The largest content (every field and attachment together) kept.
pub const LARGEST: usize = 64 * 1024;

/// What a spec is known by: all of it, each field tagged and its length first, so two specs
/// share a template only if they are the same. Compared whole on a hit: a digest of it (SHA-256
/// once) cost 1.5% of serve's CPU at one recipient a request, the copy and the map's hash far
/// less.
type Key = Arc<[u8]>;

#[derive(Debug, Default)]
pub struct Templates {
    compiled: FxMap<Key, Arc<MessageTemplate>>,
    /// Keys in the order they came, to forget the oldest.
    order: VecDeque<Key>,
}

impl Templates {
    /// The template of `spec`: the one kept, or compiled now (and kept, if small enough).
    /// `campaign` is the id a template compiled here keeps as its own; callers render with
    /// their own ids, so it does not matter which request compiled it.
    pub fn get(&mut self, spec: &MessageSpec, campaign: &str) -> Result<Arc<MessageTemplate>, TemplateError> {
        let Some(key) = key_of(spec) else {
            return Ok(Arc::new(MessageTemplate::new(spec, campaign)?));
        };
        if let Some(t) = self.compiled.get(&*key) {
            return Ok(Arc::clone(t));
        }
        let key: Key = key.into();
        let template = Arc::new(MessageTemplate::new(spec, campaign)?);
        if self.order.len() >= ENTRIES
            && let Some(oldest) = self.order.pop_front()
        {
            self.compiled.remove(&oldest);
        }
        self.compiled.insert(Arc::clone(&key), Arc::clone(&template));
        self.order.push_back(key);
        Ok(template)
    }

    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }
}

/// The key of `spec`, or `None` when it is not to be kept (too large, or with parts a request
/// never has).
fn key_of(spec: &MessageSpec) -> Option<Vec<u8>> {
    fn text_of(s: &Option<String>) -> Option<&[u8]> {
        s.as_deref().map(str::as_bytes)
    }
    // Every field, named so that a field added to the spec cannot be left out of the key.
    let MessageSpec { message, subject, text, html, attachments, from, mail_from, unsubscribe, headers } =
        spec;
    if unsubscribe.is_some() {
        return None;
    }
    let mut size = 0;
    let texts = [message, subject, text, html].map(|t| t.as_ref().map_or(0, String::len));
    let mut key = Vec::with_capacity(texts.iter().sum::<usize>().min(LARGEST) + 128);
    // Each field tagged and its length first, so that no two specs make the same stream.
    let mut field = |tag: u8, value: Option<&[u8]>| {
        size += value.map_or(0, <[u8]>::len);
        if size > LARGEST {
            return;
        }
        key.push(tag);
        match value {
            None => key.push(0),
            Some(v) => {
                key.push(1);
                key.extend_from_slice(&(v.len() as u64).to_be_bytes());
                key.extend_from_slice(v);
            }
        }
    };
    field(1, text_of(message));
    field(2, text_of(subject));
    field(3, text_of(text));
    field(4, text_of(html));
    field(5, text_of(from));
    field(6, text_of(mail_from));
    for (name, value) in headers {
        field(7, Some(name.as_bytes()));
        field(8, Some(value.as_bytes()));
    }
    for a in attachments {
        field(9, Some(a.name.as_bytes()));
        field(10, Some(a.content_type.as_bytes()));
        field(11, Some(&a.bytes));
    }
    (size <= LARGEST).then_some(key)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use minijinja::Value;

    use super::*;
    use crate::proto::Address;
    use crate::send::input::{Row, Vars};

    fn raw(message: &str) -> MessageSpec {
        MessageSpec { message: Some(message.into()), ..MessageSpec::default() }
    }

    fn row() -> Row {
        Row { line: 1, email: Address::new("a@example.net").unwrap(), vars: Vars::Json(Default::default()) }
    }

    fn text(t: &MessageTemplate, campaign: &str) -> String {
        let rendered = t.render_as(&row(), &Value::from(campaign), UNIX_EPOCH).unwrap();
        String::from_utf8(rendered.body.bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_same_content_is_compiled_once_and_rendered_with_each_requests_ids() {
        let mut cache = Templates::default();
        let spec = raw("From: app@example.com\r\nSubject: hi {{ email }}\r\n\r\nbody\r\n");
        let first = cache.get(&spec, "req1").unwrap();
        let again = cache.get(&spec.clone(), "req2").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(cache.len(), 1);
        let (one, two) = (text(&again, "req1"), text(&again, "req2"));
        assert!(one.contains("Message-ID: <req1.1@example.com>"), "{one}");
        assert!(two.contains("Message-ID: <req2.1@example.com>"), "{two}");
        assert!(two.contains("Subject: hi a@example.net"), "{two}");
    }

    #[test]
    fn a_content_that_differs_anywhere_gets_its_own_template() {
        let mut cache = Templates::default();
        let base = MessageSpec {
            from: Some("app@example.com".into()),
            subject: Some("s".into()),
            text: Some("t".into()),
            ..MessageSpec::default()
        };
        let variants = [
            base.clone(),
            MessageSpec { subject: Some("s2".into()), ..base.clone() },
            MessageSpec { text: None, html: Some("t".into()), ..base.clone() },
            MessageSpec { mail_from: Some("b@example.com".into()), ..base.clone() },
            MessageSpec { headers: vec![("X-A".into(), "1".into())], ..base.clone() },
            // The same bytes split across fields differently.
            MessageSpec { headers: vec![("X-A1".into(), String::new())], ..base.clone() },
        ];
        for v in &variants {
            cache.get(v, "c").unwrap();
        }
        assert_eq!(cache.len(), variants.len());
    }

    #[test]
    fn it_keeps_a_bounded_number_and_not_the_large_or_the_broken() {
        let mut cache = Templates::default();
        for i in 0..ENTRIES + 10 {
            cache.get(&raw(&format!("From: a@example.com\r\n\r\n{i}\r\n")), "c").unwrap();
        }
        assert_eq!(cache.len(), ENTRIES);
        // The oldest went first: the first again is compiled anew, the newest is still kept.
        let newest = raw(&format!("From: a@example.com\r\n\r\n{}\r\n", ENTRIES + 9));
        let kept = cache.get(&newest, "c").unwrap();
        assert!(Arc::ptr_eq(&kept, &cache.get(&newest, "c").unwrap()));

        let mut cache = Templates::default();
        let large = raw(&format!("From: a@example.com\r\n\r\n{}\r\n", "x".repeat(LARGEST)));
        let a = cache.get(&large, "c").unwrap();
        assert!(!Arc::ptr_eq(&a, &cache.get(&large, "c").unwrap()));
        assert!(cache.get(&raw("From: a@example.com\r\n\r\n{{ unclosed\r\n"), "c").is_err());
        assert!(cache.is_empty());
    }
}
