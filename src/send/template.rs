//! The campaign's message: compiled once, rendered per recipient.
//!
//! Either a whole RFC 5322 message that is a template (`--message`), or one built from a
//! subject, text and HTML parts and attachments (`--subject`, `--text`, `--html`, `--attach`)
//! with `mail-builder`. Templates are minijinja, strict about undefined variables: a row missing
//! a variable is rejected, never sent with a hole in it.
//!
//! **Header injection.** A value rendered into a header can never add a line: the header
//! templates' formatter refuses any value holding CR or LF (the row is rejected), and encodes
//! non-ASCII values as RFC 2047 encoded-words. The rendered header section is then checked line
//! by line.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::url::URL;
use minijinja::value::ValueKind;
use minijinja::value::{Enumerator, Object};
use minijinja::{Environment, UndefinedBehavior, Value};
use thiserror::Error;

use super::input::{Row, Var};
use crate::deliver::mime;
use direct::{Direct, Piece};
use simple::Simple;

mod direct;
mod simple;
use super::unsubscribe::Unsubscribe;
use crate::deliver::dkim::Dkim;
use crate::engine::{Compose, Unsendable};
use crate::proto::body::Head;
use crate::proto::client::{Envelope, Message};
use crate::proto::command::decimal;
use crate::proto::{Address, Body};

/// Template names: the ones rendered into headers get the header formatter.
const HEAD: &str = "head";
const BODY: &str = "body";
const SUBJECT: &str = "subject";
const TEXT: &str = "text";
const HTML: &str = "html";
const MAIL_FROM: &str = "mail-from";
/// `List-Unsubscribe-Post`'s one value (RFC 8058 §3.1).
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// What the message is made of, as given by the user (file contents already read).
#[derive(Debug, Clone, Default)]
pub struct MessageSpec {
    /// A whole message (headers, blank line, body) that is a template.
    pub message: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// The From header: `addr@domain` or `Name <addr@domain>`.
    pub from: Option<String>,
    /// The envelope sender, a template (`bounces+{{ id }}@example.com`) [default: From's address].
    pub mail_from: Option<String>,
    /// Per-recipient `List-Unsubscribe` (and `-Post`) headers, and `{{ unsubscribe_url }}`.
    pub unsubscribe: Option<Unsubscribe>,
    /// More header fields of a built message, as given (name, value): the caller has checked
    /// them (no CR or LF, no field the builder writes itself).
    pub headers: Vec<(String, String)>,
}

impl MessageSpec {
    /// What identifies the message every node of a shared campaign must send: a SHA-256 over
    /// every part of the spec, the unsubscribe secret excepted (each node has its own copy of
    /// it, and a digest must not let anyone test guesses of it).
    pub fn digest(&self) -> String {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        // Each part length-prefixed, absent parts marked: no two specs hash alike by shifting
        // text from one part to the next.
        let mut part = |bytes: Option<&[u8]>| match bytes {
            Some(b) => {
                d.update(&(b.len() as u64 + 1).to_le_bytes());
                d.update(b);
            }
            None => d.update(&0u64.to_le_bytes()),
        };
        for text in [&self.message, &self.subject, &self.text, &self.html, &self.from, &self.mail_from] {
            part(text.as_deref().map(str::as_bytes));
        }
        for a in &self.attachments {
            part(Some(a.name.as_bytes()));
            part(Some(a.content_type.as_bytes()));
            part(Some(&a.bytes));
        }
        part(None);
        for (name, value) in &self.headers {
            part(Some(name.as_bytes()));
            part(Some(value.as_bytes()));
        }
        part(None);
        for (before, after) in self.unsubscribe.iter().flat_map(Unsubscribe::uri_parts) {
            part(Some(before.as_bytes()));
            part(Some(after.as_bytes()));
        }
        let digest = d.finish();
        digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A template that cannot be used at all: a start-up error.
#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("template {name}: {error}")]
    Syntax { name: &'static str, error: String },
    #[error("--from: {0}")]
    From(String),
    #[error("{0}")]
    Spec(String),
}

/// The parsed `--from`.
#[derive(Debug, Clone)]
struct FromHeader {
    name: Option<String>,
    address: Address,
}

enum Kind {
    /// `--message`: the header section and the body, as two templates.
    Raw {
        has: Present,
        /// The From header's address when the template writes it out literally (no variable
        /// in it, no tag anywhere in the header section): parsed once, not per message.
        literal_from: Option<Address>,
        /// The fast path's plan, when the template qualifies (see [`direct`]).
        direct: Option<Direct>,
    },
    Built {
        attachments: Vec<Attachment>,
        headers: Vec<(String, String)>,
        text: bool,
        html: bool,
    },
}

/// Headers the raw template's header section already has.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    from: bool,
    to: bool,
    date: bool,
    message_id: bool,
    list_unsubscribe: bool,
}

/// A rendered message.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The envelope sender (`None`: the null path, if a template rendered it empty).
    pub sender: Option<Address>,
    /// Header lines sent ahead of the content: the DKIM signatures, when signing.
    pub head: Option<Head>,
    /// The content, CRLF-normalised.
    pub body: Body,
}

pub struct MessageTemplate {
    env: Environment<'static>,
    kind: Kind,
    from: Option<FromHeader>,
    /// `--from` as a header value, made once.
    from_value: Option<String>,
    mail_from: bool,
    campaign: String,
    /// The campaign id as the templates see it (`{{ campaign }}`), made once.
    campaign_value: Value,
    /// The templates that are only text and variables, rendered without minijinja.
    simple: Vec<(&'static str, Simple)>,
    /// Signs every rendered message, when keys were given.
    dkim: Option<Dkim>,
    unsubscribe: Option<Arc<Unsubscribe>>,
}

impl std::fmt::Debug for MessageTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageTemplate").field("campaign", &self.campaign).finish_non_exhaustive()
    }
}

/// A row as the templates see it: its variables, `email` (always the parsed address), and
/// `line` and `campaign` unless the row has variables of those names. Values are looked up in
/// the row where they lie when a template asks: nothing is converted per row up front.
#[derive(Debug)]
struct Context {
    row: Arc<Row>,
    campaign: Value,
    unsubscribe: Option<Arc<Unsubscribe>>,
}

impl Object for Context {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        if key == "email" {
            return Some(Value::from(self.row.email.as_str()));
        }
        match self.row.vars.get(key) {
            Some(Var::Text(text)) => Some(Value::from(text)),
            Some(Var::Json(json)) => Some(Value::from(minijinja::value::Serde(json))),
            None if key == "line" => Some(Value::from(self.row.line)),
            None if key == "campaign" => Some(self.campaign.clone()),
            None if key == "unsubscribe_url" => {
                let url = self.unsubscribe.as_ref()?.url(self.campaign.as_str()?, self.row.email.as_str())?;
                Some(Value::from(url))
            }
            None => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut names = self.row.vars.names();
        let url = self.unsubscribe.as_ref().is_some_and(|u| u.one_click());
        for extra in ["email", "line", "campaign", "unsubscribe_url"] {
            if !names.contains(&extra) && (extra != "unsubscribe_url" || url) {
                names.push(extra);
            }
        }
        Enumerator::Values(names.into_iter().map(Value::from).collect())
    }
}

/// One recipient's message, left for the core that sends it to render (see
/// [`crate::engine::Payload`]): rendering runs on every core in parallel.
#[derive(Debug)]
pub struct Recipe {
    /// Held in the recipe itself: one allocation per row fewer, freed on another thread.
    pub row: Row,
    pub template: Arc<MessageTemplate>,
}

impl Compose for Recipe {
    fn compose(self: Box<Self>, at: SystemTime) -> Result<Message, Unsendable> {
        match self.template.render(&self.row, at) {
            Ok(rendered) => {
                let envelope = Envelope { sender: rendered.sender, recipients: vec![self.row.email.clone()] };
                Ok(Message { envelope: Arc::new(envelope), head: rendered.head, body: rendered.body })
            }
            Err(reason) => Err(Unsendable { recipients: vec![self.row.email.clone()], reason }),
        }
    }

    fn recipients(&self) -> Vec<crate::proto::Address> {
        vec![self.row.email.clone()]
    }
}

impl MessageTemplate {
    /// Compiles the templates; `campaign` makes Message-IDs unique across runs.
    pub fn new(spec: &MessageSpec, campaign: &str) -> Result<MessageTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // A message ends in a newline: keep it (minijinja drops it by default).
        let syntax = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build();
        env.set_syntax(syntax.map_err(|e| TemplateError::Spec(e.to_string()))?);
        env.set_formatter(|out, state, value| {
            if matches!(value.kind(), ValueKind::Map | ValueKind::Seq) {
                return Err(whole_collection(state, value));
            }
            if matches!(state.name(), HEAD | SUBJECT | MAIL_FROM) {
                header_value(out, value)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        let mut simple = Vec::new();
        let mut add = |name: &'static str, source: &str| {
            env.add_template_owned(name, source.to_owned())
                .map_err(|e| TemplateError::Syntax { name, error: format!("{e:#}") })?;
            // The HTML part's values are HTML-escaped (minijinja escapes by the name's
            // "extension"): that one is always minijinja's.
            if let Some(s) = Simple::parse(source).filter(|_| name != HTML) {
                simple.push((name, s));
            }
            Ok(())
        };
        let from = spec.from.as_deref().map(parse_from).transpose().map_err(TemplateError::From)?;
        let built = spec.subject.is_some()
            || spec.text.is_some()
            || spec.html.is_some()
            || !spec.attachments.is_empty();
        let kind = match (&spec.message, built) {
            (Some(_), true) => {
                return Err(TemplateError::Spec(
                    "--message is a whole message: it cannot be combined with --subject, --text, --html or --attach".into(),
                ));
            }
            (None, false) => {
                return Err(TemplateError::Spec(
                    "no message: give --message, or --subject with --text and/or --html".into(),
                ));
            }
            (Some(message), false) => {
                let (head, body) = split_message(message);
                let has = present(head);
                if has.list_unsubscribe && spec.unsubscribe.is_some() {
                    return Err(TemplateError::Spec(
                        "the message has its own List-Unsubscribe header: remove it, or drop --unsubscribe-url/--unsubscribe-mailto".into(),
                    ));
                }
                if !has.from && from.is_none() {
                    return Err(TemplateError::Spec(
                        "the message has no From header: add one or give --from".into(),
                    ));
                }
                // UTF-8 text of the template's own header lines goes out as encoded-words.
                add(HEAD, &mime::encode_header_literals(head))?;
                add(BODY, body)?;
                let literal_from = literal_from(head);
                // Decided below, once every template is compiled.
                Kind::Raw { has, literal_from, direct: None }
            }
            (None, true) => {
                if from.is_none() {
                    return Err(TemplateError::Spec("a built message needs --from".into()));
                }
                if spec.text.is_none() && spec.html.is_none() {
                    return Err(TemplateError::Spec("a built message needs --text and/or --html".into()));
                }
                add(SUBJECT, spec.subject.as_deref().unwrap_or(""))?;
                if let Some(text) = &spec.text {
                    add(TEXT, text)?;
                }
                if let Some(html) = &spec.html {
                    add(HTML, html)?;
                }
                Kind::Built {
                    attachments: spec.attachments.clone(),
                    headers: spec.headers.clone(),
                    text: spec.text.is_some(),
                    html: spec.html.is_some(),
                }
            }
        };
        if let Some(mail_from) = &spec.mail_from {
            add(MAIL_FROM, mail_from)?;
        }
        let mut t = MessageTemplate {
            env,
            kind,
            from_value: from.as_ref().map(format_from),
            from,
            mail_from: spec.mail_from.is_some(),
            campaign: campaign.to_owned(),
            campaign_value: Value::from(campaign),
            simple,
            dkim: None,
            unsubscribe: spec.unsubscribe.clone().map(Arc::new),
        };
        if let Kind::Raw { has, literal_from, .. } = &t.kind {
            // The Message-ID's domain must be known without rendering the From header.
            let domain = t.known_domain(has, literal_from.as_ref());
            let plan = match (domain, t.simple_of(HEAD), t.simple_of(BODY)) {
                (Some(domain), Some(head), Some(body)) => {
                    Direct::new(head, body, t.unsubscribe.as_ref(), |emit| t.added_headers(has, domain, emit))
                }
                _ => None,
            };
            if let Kind::Raw { direct, .. } = &mut t.kind {
                *direct = plan;
            }
        }
        Ok(t)
    }

    /// Tells the template the CSV input's column names (shared by its rows), so the fast path
    /// finds each variable by position.
    pub fn bind_columns(&mut self, columns: &Arc<[String]>) {
        if let Kind::Raw { direct: Some(direct), .. } = &mut self.kind {
            direct.bind(columns);
        }
    }

    /// Signs every message rendered from now on with `dkim`'s keys.
    pub fn sign_with(&mut self, dkim: Dkim) {
        self.dkim = Some(dkim);
    }

    pub fn dkim(&self) -> Option<&Dkim> {
        self.dkim.as_ref()
    }

    /// Renders the message for `row`. An `Err` is the reason the row is rejected.
    pub fn render(&self, row: &Row, now: SystemTime) -> Result<Rendered, String> {
        self.render_as(row, &self.campaign_value, now)
    }

    /// Renders the message for `row` as one of campaign `campaign` (its Message-IDs,
    /// `{{ campaign }}`, unsubscribe links) rather than the template's own: one compiled
    /// template then serves many requests, each with ids of its own (`serve`'s HTTP API).
    pub fn render_as(&self, row: &Row, campaign: &Value, now: SystemTime) -> Result<Rendered, String> {
        let campaign_text = campaign.as_str().unwrap_or_default();
        // minijinja's view of the row, made once if any template needs it.
        let context = std::cell::OnceCell::new();
        let render = |name: &str| -> Result<String, String> {
            let header = matches!(name, HEAD | SUBJECT | MAIL_FROM);
            if let Some(out) = self.simple_of(name).and_then(|s| s.render(row, campaign, header)) {
                return Ok(out);
            }
            let ctx = context.get_or_init(|| {
                Value::from_object(Context {
                    // A copy, only for the rows minijinja renders (the plans need none).
                    row: Arc::new(row.clone()),
                    campaign: campaign.clone(),
                    unsubscribe: self.unsubscribe.clone(),
                })
            });
            let template = self.env.get_template(name).map_err(|e| e.to_string())?;
            template.render(ctx).map_err(|e| format!("template {name}: {}", describe(&e)))
        };
        // The rendered From header's address, when the template has one.
        let mut header_from = None;
        let mut literal_sender = None;
        let body = match &self.kind {
            Kind::Raw { has, literal_from, direct } => {
                let known_domain = self.known_domain(has, literal_from.as_ref());
                if has.from {
                    // The template's own From header gives the envelope sender by default.
                    literal_sender = literal_from.as_ref();
                }
                match direct.as_ref().and_then(|d| d.render(row, campaign, now)) {
                    Some(body) => body,
                    None => {
                        let head = render(HEAD)?;
                        check_header_section(&head)?;
                        let body = render(BODY)?;
                        let domain = match known_domain {
                            Some(domain) => domain,
                            None => {
                                let addr = address_of_header(&head, "from")
                                    .ok_or("the From header has no address")?;
                                header_from.insert(addr).rsplit_once('@').map_or("", |(_, d)| d)
                            }
                        };
                        let mut added = String::with_capacity(160);
                        if !head.is_empty() && !head.ends_with('\n') {
                            added.push_str("\r\n");
                        }
                        self.added_headers(has, domain, &mut |p| {
                            self.piece_text(row, campaign_text, now, p, &mut added)
                        });
                        // The encoder makes every line ending CRLF (the header section was
                        // checked above: it has no bare CR).
                        Body::from_chunks(&[head.as_bytes(), added.as_bytes(), body.as_bytes()])
                    }
                }
            }
            Kind::Built { attachments, headers, text, html } => {
                let from = self.from.as_ref().ok_or("no --from")?;
                let message_id = self.message_id(row, campaign_text, from.address.domain());
                let subject = render(SUBJECT)?;
                let mut builder = mail_builder::MessageBuilder::new()
                    .from(match &from.name {
                        Some(n) => mail_builder::headers::address::Address::new_address(
                            Some(n.clone()),
                            from.address.as_str().to_owned(),
                        ),
                        None => mail_builder::headers::address::Address::new_address(
                            None::<String>,
                            from.address.as_str().to_owned(),
                        ),
                    })
                    .to(row.email.as_str().to_owned())
                    .subject(subject)
                    .date(mail_builder::headers::date::Date::new(unix_seconds(now)))
                    .message_id(message_id.trim_start_matches('<').trim_end_matches('>').to_owned());
                if let Some(u) = &self.unsubscribe {
                    let uris = u.uris(campaign_text, row.email.as_str());
                    builder = builder.header("List-Unsubscribe", URL::new_list(uris.into_iter()));
                    if u.one_click() {
                        builder = builder.header("List-Unsubscribe-Post", Raw::new(ONE_CLICK));
                    }
                }
                for (name, value) in headers {
                    builder = builder.header(name.clone(), Raw::new(value.clone()));
                }
                if *text {
                    builder = builder.text_body(render(TEXT)?);
                }
                if *html {
                    builder = builder.html_body(render(HTML)?);
                }
                for a in attachments {
                    builder = builder.attachment(a.content_type.clone(), a.name.clone(), a.bytes.as_slice());
                }
                let content = builder.write_to_vec().map_err(|e| format!("building the message: {e}"))?;
                Body::new(&content)
            }
        };
        let sender = if self.mail_from {
            let text = render(MAIL_FROM)?;
            let text = text.trim();
            if text.is_empty() || text == "<>" {
                None
            } else {
                Some(Address::new(text).map_err(|e| format!("--mail-from rendered `{text}`: {e}"))?)
            }
        } else {
            match (header_from, &self.from) {
                _ if literal_sender.is_some() => literal_sender.cloned(),
                (Some(addr), _) => {
                    Some(Address::new(&addr).map_err(|e| format!("From address `{addr}`: {e}"))?)
                }
                (None, Some(f)) => Some(f.address.clone()),
                (None, None) => return Err("the From header has no address".into()),
            }
        };
        // A user's message may hold what some servers refuse (see `mime`); built messages are
        // encoded by mail-builder already.
        let body = match &self.kind {
            Kind::Raw { .. } => mime::fit_for_any_server(body)?,
            Kind::Built { .. } => body,
        };
        // Signed last, over exactly the content that will be sent.
        let head = self.dkim.as_ref().map(|d| d.sign(body.bytes())).transpose()?;
        Ok(Rendered { sender, head, body })
    }

    /// The domain of a raw template's Message-IDs (the sender's) when it is known without
    /// rendering: `--from`'s when the template has no From header, else a literal From's.
    fn known_domain<'a>(&'a self, has: &Present, literal_from: Option<&'a Address>) -> Option<&'a str> {
        match (&self.from, literal_from) {
            (Some(f), _) if !has.from => Some(f.address.domain()),
            (_, Some(addr)) => Some(addr.domain()),
            _ => None,
        }
    }

    /// The headers a raw template lacks (From, To, Date, Message-ID), the unsubscribe headers,
    /// then the empty line that ends the header section, as fixed text and the message's
    /// values (so the fast path can prepare the text once).
    fn added_headers(&self, has: &Present, domain: &str, emit: &mut dyn FnMut(Piece<'_>)) {
        if let Some(from) = self.from_value.as_deref().filter(|_| !has.from) {
            [Piece::Text("From: "), Piece::Text(from), Piece::Text("\r\n")].into_iter().for_each(&mut *emit);
        }
        if !has.to {
            [Piece::Text("To: <"), Piece::Email, Piece::Text(">\r\n")].into_iter().for_each(&mut *emit);
        }
        if !has.date {
            [Piece::Text("Date: "), Piece::Date, Piece::Text("\r\n")].into_iter().for_each(&mut *emit);
        }
        if !has.message_id {
            emit(Piece::Text("Message-ID: "));
            self.message_id_pieces(domain, emit);
            emit(Piece::Text("\r\n"));
        }
        if let Some(u) = &self.unsubscribe {
            [Piece::Text("List-Unsubscribe: "), Piece::Unsubscribe, Piece::Text("\r\n")]
                .into_iter()
                .for_each(&mut *emit);
            if u.one_click() {
                [Piece::Text("List-Unsubscribe-Post: "), Piece::Text(ONE_CLICK), Piece::Text("\r\n")]
                    .into_iter()
                    .for_each(&mut *emit);
            }
        }
        emit(Piece::Text("\r\n"));
    }

    /// Pieces as text, for `row` of `campaign` at `now`.
    fn piece_text(&self, row: &Row, campaign: &str, now: SystemTime, piece: Piece<'_>, out: &mut String) {
        match piece {
            Piece::Unsubscribe => {
                if let Some(u) = &self.unsubscribe {
                    u.write_header_value(campaign, row.email.as_str(), out);
                }
            }
            Piece::Text(text) => out.push_str(text),
            Piece::Campaign => out.push_str(campaign),
            Piece::Email => out.push_str(row.email.as_str()),
            Piece::Date => with_date(unix_seconds(now), |date| out.push_str(date)),
            Piece::Line => out.push_str(decimal(row.line, &mut [0; 20])),
        }
    }

    fn simple_of(&self, name: &str) -> Option<&Simple> {
        self.simple.iter().find(|(n, _)| *n == name).map(|(_, s)| s)
    }

    /// Unique per recipient of a campaign, the same for its retries (receivers can tell a
    /// resend by it).
    fn message_id(&self, row: &Row, campaign: &str, domain: &str) -> String {
        let mut id = String::with_capacity(campaign.len() + domain.len() + 24);
        self.message_id_pieces(domain, &mut |p| self.piece_text(row, campaign, UNIX_EPOCH, p, &mut id));
        id
    }

    /// `<campaign.line@domain>`.
    fn message_id_pieces(&self, domain: &str, emit: &mut dyn FnMut(Piece<'_>)) {
        let pieces = [Piece::Text("<"), Piece::Campaign, Piece::Text("."), Piece::Line];
        pieces.into_iter().chain([Piece::Text("@"), Piece::Text(domain), Piece::Text(">")]).for_each(emit);
    }
}

/// minijinja's error with its detail (which variable, which line).
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    if let Some(detail) = e.detail() {
        if !text.contains(detail) {
            text = format!("{text}: {detail}");
        }
    }
    text
}

/// The error for printing a whole map or list (a JSONL value `{"first": "Jo"}` would otherwise
/// go out as minijinja's `{"first": "Jo"}` text), naming the variable when it is one of the
/// row's or a field of one.
fn whole_collection(state: &minijinja::State<'_, '_>, value: &Value) -> minijinja::Error {
    let what = if value.kind() == ValueKind::Map { "map" } else { "list" };
    let mut name = None;
    for var in state.known_variables() {
        let Some(top) = state.lookup(&var) else { continue };
        if top == *value {
            name = Some(var.into_owned());
            break;
        }
        if top.kind() == ValueKind::Map {
            let mut fields = top.try_iter().into_iter().flatten();
            if let Some(field) = fields.find(|k| top.get_item(k).is_ok_and(|v| v == *value)) {
                name = Some(format!("{var}.{field}"));
                break;
            }
        }
    }
    let why = match name {
        Some(name) => format!(
            "`{name}` is a whole {what}: print one of its {} (`{{{{ {name}{} }}}}`), not all of it",
            if what == "map" { "fields" } else { "items" },
            if what == "map" { ".field" } else { "[0]" },
        ),
        None => format!("a whole {what} cannot be printed: print one of its fields or items"),
    };
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, why)
}

/// The header formatter: a value may not break the line; non-ASCII becomes an encoded-word.
fn header_value(out: &mut minijinja::Output, value: &Value) -> Result<(), minijinja::Error> {
    let formatted;
    let text = match value.as_str() {
        Some(text) => text,
        None => {
            formatted = value.to_string();
            &formatted
        }
    };
    let text = header_text(text)
        .map_err(|why| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, why))?;
    out.write_str(&text)
        .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "formatting failed"))
}

/// `text` as a header value: refused if it would break the line, an RFC 2047 encoded-word if
/// it is not ASCII.
fn header_text(text: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    // One pass over the bytes through a table (this runs for every value of every message, and
    // values are short: a vectorised scan's set-up cost more); characters are decoded only for
    // non-ASCII text, whose controls (C1) are not single bytes.
    const LINE_BREAK: u8 = 1;
    const CONTROL: u8 = 2;
    const NON_ASCII: u8 = 4;
    const CLASS: [u8; 256] = {
        let mut class = [0u8; 256];
        let mut b = 0;
        while b < 256 {
            class[b] = match b as u8 {
                b'\r' | b'\n' => LINE_BREAK,
                b'\t' => 0,
                0..0x20 | 0x7f => CONTROL,
                0x80.. => NON_ASCII,
                _ => 0,
            };
            b += 1;
        }
        class
    };
    let seen = text.bytes().fold(0, |seen, b| seen | CLASS[usize::from(b)]);
    let (line_break, control, ascii) = (seen & LINE_BREAK != 0, seen & CONTROL != 0, seen & NON_ASCII == 0);
    if line_break {
        return Err("a value rendered into a header contains a line break (header injection refused)");
    }
    if control || (!ascii && text.chars().any(char::is_control)) {
        return Err("a value rendered into a header contains a control character");
    }
    if ascii {
        return Ok(text.into());
    }
    let mut encoded = String::with_capacity(text.len() * 2);
    mime::encoded_words(text, &mut encoded);
    Ok(encoded.into())
}

/// Splits a message template at its first empty line.
fn split_message(message: &str) -> (&str, &str) {
    let bytes = message.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let line = &message[start..end];
        if line.trim_end_matches('\r').is_empty() {
            return (&message[..start], message.get(end + 1..).unwrap_or(""));
        }
        start = end + 1;
    }
    (message, "")
}

/// Which of the headers volley adds are already in the header section's template.
fn present(head: &str) -> Present {
    let mut p = Present::default();
    for line in head.lines() {
        let Some((name, _)) = line.split_once(':') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "from" => p.from = true,
            "to" => p.to = true,
            "date" => p.date = true,
            "message-id" => p.message_id = true,
            "list-unsubscribe" => p.list_unsubscribe = true,
            _ => {}
        }
    }
    p
}

/// Every rendered header line is a field (`Name: value`) or the continuation of one.
fn check_header_section(head: &str) -> Result<(), String> {
    for (i, line) in head.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.contains('\r') {
            return Err(format!("header line {} has a bare CR", i + 1));
        }
        if line.starts_with([' ', '\t']) {
            if i == 0 {
                return Err("the header section starts with a continuation line".into());
            }
            continue;
        }
        let name = line.split_once(':').map(|(n, _)| n).unwrap_or("");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("header line {} is not `Name: value`: {:?}", i + 1, truncate(line, 60)));
        }
    }
    Ok(())
}

/// Calls `f` with the RFC 5322 date of `secs`, formatted once per second per thread.
fn with_date<R>(secs: i64, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *text = mail_builder::headers::date::Date::new(secs).to_rfc822();
            *at = secs;
        }
        f(text)
    })
}

/// The From address of a header section template that writes it out literally.
fn literal_from(head: &str) -> Option<Address> {
    let from_line = head.lines().find(|l| is_field(l, "from"))?;
    let continued =
        head.lines().skip_while(|l| *l != from_line).nth(1).is_some_and(|next| next.starts_with([' ', '\t']));
    if head.contains("{%") || head.contains("{#") || from_line.contains('{') || continued {
        return None;
    }
    Address::new(&address_of_header(from_line, "from")?).ok()
}

/// The value of the first `name:` header of a message (template), continuation lines joined;
/// `None` if it has none.
pub fn header_of(message: &str, name: &str) -> Option<String> {
    let (head, _) = split_message(message);
    let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.find(|l| is_field(l, name))?;
    let mut value = first.split_once(':').map_or("", |(_, v)| v).trim().to_owned();
    for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        value.push(' ');
        value.push_str(more.trim());
    }
    Some(value)
}

/// The address in the first `name:` header of a header section (`Name <a@b>` or `a@b`).
fn address_of_header(head: &str, name: &str) -> Option<String> {
    let line =
        head.lines().take_while(|l| !l.trim_end_matches('\r').is_empty()).find(|l| is_field(l, name))?;
    address_in(line.split_once(':')?.1).map(str::to_owned)
}

/// Whether a header line is the field `name` (case ignored).
fn is_field(line: &str, name: &str) -> bool {
    line.split_once(':').is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
}

/// The address in an address header's value (`Name <a@b>`, `<a@b>` or `a@b`), if it has one.
pub fn address_in(value: &str) -> Option<&str> {
    let value = value.trim();
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    addr.contains('@').then(|| addr.trim())
}

fn parse_from(text: &str) -> Result<FromHeader, String> {
    let text = text.trim();
    if text.contains(['\r', '\n']) {
        return Err("contains a line break".into());
    }
    let (name, addr) = match (text.rfind('<'), text.ends_with('>')) {
        (Some(i), true) => {
            let name = text[..i].trim().trim_matches('"').trim();
            ((!name.is_empty()).then(|| name.to_owned()), &text[i + 1..text.len() - 1])
        }
        _ => (None, text),
    };
    let address = Address::new(addr.trim()).map_err(|e| format!("`{addr}`: {e}"))?;
    Ok(FromHeader { name, address })
}

fn format_from(f: &FromHeader) -> String {
    match &f.name {
        Some(n) if n.is_ascii() => format!("\"{}\" <{}>", n.replace(['"', '\\'], ""), f.address),
        Some(n) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(n.as_bytes());
            format!("=?utf-8?B?{encoded}?= <{}>", f.address)
        }
        None => format!("<{}>", f.address),
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A content type for an attachment, from its file name.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "ics" => "text/calendar",
        "zip" => "application/zip",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests;
