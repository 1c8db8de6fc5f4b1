//! The HTTP API: `POST /api/v1/messages` (JSON, KumoMTA-shaped), `GET /api/v1/messages/{id}`
//! (its status, see [`super::status`]: for the key that submitted it or an admin key), queue
//! control for operators (`/api/v1/queue`, see [`super::queue`]; only for `--admin-keys`) and
//! `GET /healthz`, on axum,
//! on its own thread with a tokio runtime (as the DNS thread). A request is checked whole
//! (key, JSON, addresses, headers, every recipient's rendering) before anything is spooled,
//! then its messages are made durable together ([`Intake::accept`]) and only then is it
//! answered 202. Errors are `{"error": {"code", "message", "field"}}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body as HttpBody;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::intake::{Intake, Refused, now_ms, received_field};
use super::keys::ApiKeys;
use super::metrics::Via;
use super::queue::{Command, QueueError, QueueHandle};
use super::spool::{Accepted, Admission, MessageId, recipient_id};
use super::status::StatusReader;
use super::templates::Templates;
use crate::deliver::hold::Selector;
use crate::metrics::Metrics;
use crate::proto::Address;
use crate::send::input::{Row, Vars};
use crate::send::template::{Attachment, MessageSpec, content_type_for};

/// Recipients one request may name.
pub const MAX_RECIPIENTS: usize = 1000;
/// The longest Idempotency-Key kept.
const MAX_KEY: usize = 255;
/// Seconds a client is asked to wait when the service cannot take its request now.
const RETRY_AFTER: &str = "30";
/// Header fields a built message's `headers` may not set: the builder writes them.
const BUILT_FIELDS: [&str; 9] = [
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Keys that may submit messages (none: `/api/v1/messages` refuses every request).
    pub keys: Option<Arc<ApiKeys>>,
    /// Keys that may see and steer the queue (none: `/api/v1/queue` refuses every request).
    pub admin_keys: Option<Arc<ApiKeys>>,
    /// Messages' status (`GET /api/v1/messages/{id}`), if kept.
    pub status: Option<StatusReader>,
    /// The largest message; a request body may be a third larger (base64 attachments).
    pub max_message_size: u64,
    /// This host's name, for the trace header.
    pub hostname: String,
}

/// The API, running.
pub type HttpHandle = crate::rt::http::HttpServer;

struct App {
    intake: Intake,
    /// Only this thread takes it (axum wants its state `Sync`), so it never waits.
    templates: Mutex<Templates>,
    keys: Option<Arc<ApiKeys>>,
    admin_keys: Option<Arc<ApiKeys>>,
    queue: QueueHandle,
    status: Option<StatusReader>,
    body_limit: usize,
    max_message_size: u64,
    hostname: String,
}

/// Binds `config.listen` (an error here is the caller's to report) and serves on a thread;
/// `metrics`, if given, on `GET /metrics` too.
pub fn start(
    config: HttpConfig,
    intake: Intake,
    queue: QueueHandle,
    metrics: Option<Arc<Metrics>>,
) -> std::io::Result<HttpHandle> {
    let body_limit =
        usize::try_from(config.max_message_size.saturating_mul(4) / 3 + 64 * 1024).unwrap_or(usize::MAX);
    let app = Arc::new(App {
        intake,
        templates: Mutex::new(Templates::default()),
        keys: config.keys,
        admin_keys: config.admin_keys,
        queue,
        status: config.status,
        body_limit,
        max_message_size: config.max_message_size,
        hostname: config.hostname,
    });
    let mut router = Router::new()
        .route("/api/v1/messages", post(submit))
        .route("/api/v1/messages/{id}", get(message_status))
        .route("/healthz", get(health))
        .route("/api/v1/queue", get(queue_list))
        .route("/api/v1/queue/{dest}", get(queue_show))
        .route("/api/v1/queue/{dest}/{action}", post(queue_act))
        // The body is read by the handler, under its own limit (answered 413 in JSON).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app);
    if let Some(metrics) = metrics {
        router = router.merge(crate::metrics::http::router(metrics));
    }
    HttpHandle::start(config.listen, router, "http")
}

async fn health(State(app): State<Arc<App>>) -> Response {
    if app.intake.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// An error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        }
        response
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> ApiError {
        match &refused {
            Refused::Content(reason) => ApiError::invalid("content", reason.clone()),
            _ if !refused.is_temporary() => ApiError::invalid("recipients", refused.to_string()),
            Refused::Stopping => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", refused.to_string())
            }
            Refused::NoSpace => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "spool_full", refused.to_string())
            }
            Refused::Spool(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "spool_error", refused.to_string())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    envelope_sender: Option<String>,
    recipients: Vec<RecipientIn>,
    content: Content,
    #[serde(default)]
    substitutions: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientIn {
    email: String,
    name: Option<String>,
    #[serde(default)]
    substitutions: Map<String, Value>,
}

#[derive(Debug)]
enum Content {
    /// A whole RFC 5322 message (a template).
    Raw(String),
    Built(Built),
}

/// By the JSON value's type: a string or an object. (Serde's `untagged` does the same by
/// buffering the value and trying each variant: a sixth of a one-recipient request's handling,
/// and an error that named neither.)
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole message as a string, or an object of its parts")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Raw(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Raw(s))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Content, A::Error> {
                Built::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Content::Built)
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Built {
    from: String,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    reply_to: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<AttachmentIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentIn {
    filename: String,
    content_type: Option<String>,
    /// Base64.
    data: String,
}

async fn submit(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: HttpBody,
) -> Response {
    match accept(&app, peer, &headers, body).await {
        Ok(answer) => json_response(StatusCode::ACCEPTED, &answer),
        Err(e) => e.into_response(),
    }
}

async fn accept(app: &App, peer: SocketAddr, headers: &HeaderMap, body: HttpBody) -> Result<Value, ApiError> {
    let key_name = authorize(app.keys.as_ref(), "--api-keys", headers)?;
    let bytes = axum::body::to_bytes(body, app.body_limit).await.map_err(|_| {
        let message = format!("the request is larger than {} octets", app.body_limit);
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    })?;
    let request: Request = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", format!("the body is not a valid request: {e}"))
    })?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => {
            let key = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= MAX_KEY);
            let bad = || {
                ApiError::invalid(
                    "Idempotency-Key",
                    format!("must be 1 to {MAX_KEY} visible ASCII characters"),
                )
            };
            Some(Arc::<str>::from(key.ok_or_else(bad)?))
        }
        None => None,
    };
    let messages = render(app, &request, peer, &key_name)?;
    // As the spool keeps them for a replay: the parsed address.
    let emails: Vec<String> = messages
        .iter()
        .map(|m| m.recipients.first().map_or(String::new(), |a| a.as_str().to_owned()))
        .collect();
    let scoped = idempotency_key.map(|key| (&*key_name, key));
    let admitted: Vec<(MessageId, String)> = match app.intake.accept(messages, scoped, Via::Http).await? {
        Admission::New(ids) => ids.into_iter().zip(emails).collect(),
        // The first request's answer, whatever this one asked.
        Admission::Replay(first) => first,
    };
    let recipients: Vec<Value> = admitted
        .iter()
        .map(|(id, email)| json!({"email": email, "id": recipient_id(*id, 0), "message": id.0}))
        .collect();
    Ok(json!({"id": admitted.first().map_or(0, |(id, _)| id.0), "recipients": recipients}))
}

/// The name of the key the request carries, if it is one of `keys` (given as `flag`).
fn authorize(keys: Option<&Arc<ApiKeys>>, flag: &str, headers: &HeaderMap) -> Result<Arc<str>, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an `Authorization: Bearer KEY` header is required",
        )
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let key = value.as_bytes().strip_prefix(b"Bearer ").ok_or_else(missing)?;
    keys.and_then(|keys| keys.check(key)).ok_or_else(|| {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("the key is not one of {flag}"))
    })
}

/// `GET /api/v1/messages/{id}`: each recipient's latest record, for the key that submitted
/// the message (or an admin key).
async fn message_status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match status_of(&app, &headers, &id).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    }
}

async fn status_of(app: &Arc<App>, headers: &HeaderMap, id: &str) -> Result<Value, ApiError> {
    // An admin key sees every message; an application's key those it submitted.
    let admin = authorize(app.admin_keys.as_ref(), "--admin-keys", headers).is_ok();
    let own = if admin { None } else { Some(authorize(app.keys.as_ref(), "--api-keys", headers)?) };
    let Some(status) = app.status.clone() else {
        let message = "message status is not kept (--status-retention 0)";
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_kept", message));
    };
    let id = id.parse::<u64>().map_err(|_| ApiError::invalid("id", "a message id is a number"))?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no message {id} (or not yours, or forgotten)"),
        )
    };
    let found = tokio::task::spawn_blocking(move || {
        status.message(MessageId(id), |origin| own.as_deref().is_none_or(|key| key == origin))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "status_error", e.to_string()))?;
    found.ok_or_else(not_found)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    /// How long (`30m`, `2h`); none: until resumed.
    #[serde(rename = "for")]
    duration: Option<String>,
}

/// `GET /api/v1/queue`: what waits, by destination.
async fn queue_list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    // One parameter, a number: `?limit=N`.
    let limit = match query.as_deref().map(|q| q.strip_prefix("limit=").and_then(|n| n.parse::<usize>().ok()))
    {
        None => super::queue::LIST_LIMIT,
        Some(Some(n)) => n,
        Some(None) => return ApiError::invalid("limit", "the only parameter is limit=N").into_response(),
    };
    queue_answer(queue_summary(&app, &headers, None, limit).await)
}

/// `GET /api/v1/queue/DEST`: what waits for DEST, with its first recipients.
async fn queue_show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path(dest): axum::extract::Path<String>,
) -> Response {
    let answer = match Selector::parse(&dest) {
        Ok(selector) => queue_summary(&app, &headers, Some(selector), usize::MAX).await,
        Err(e) => Err(ApiError::invalid("dest", e.to_string())),
    };
    queue_answer(answer)
}

async fn queue_summary(
    app: &Arc<App>,
    headers: &HeaderMap,
    only: Option<Selector>,
    limit: usize,
) -> Result<Value, ApiError> {
    authorize(app.admin_keys.as_ref(), "--admin-keys", headers)?;
    let routes = app.queue.order(Command::Routes).await.map_err(queue_error)?;
    let queue = app.queue.clone();
    // It reads every waiting recipient: not on the runtime's threads.
    tokio::task::spawn_blocking(move || queue.summary(&routes, only.as_ref(), limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(queue_error)
}

/// `POST /api/v1/queue/DEST/{suspend,resume,retry-now,bounce}`.
async fn queue_act(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path((dest, action)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    queue_answer(queue_command(&app, &headers, &dest, &action, &body).await)
}

async fn queue_command(
    app: &App,
    headers: &HeaderMap,
    dest: &str,
    action: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    authorize(app.admin_keys.as_ref(), "--admin-keys", headers)?;
    let selector = Selector::parse(dest).map_err(|e| ApiError::invalid("dest", e.to_string()))?;
    let command = match action {
        "suspend" => {
            let request: SuspendBody = if body.iter().all(u8::is_ascii_whitespace) {
                SuspendBody::default()
            } else {
                serde_json::from_slice(body).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed",
                        format!("the body is not a valid request: {e}"),
                    )
                })?
            };
            let duration =
                match request.duration {
                    Some(d) => Some(humantime::parse_duration(&d).ok().filter(|d| !d.is_zero()).ok_or_else(
                        || ApiError::invalid("for", format!("`{d}` is not a duration such as 30m or 2h")),
                    )?),
                    None => None,
                };
            Command::Suspend(selector, duration)
        }
        "resume" => Command::Resume(selector),
        "retry-now" => Command::RetryNow(selector),
        "bounce" => Command::Bounce(selector),
        other => {
            let message = format!("no action `{other}`: suspend, resume, retry-now or bounce");
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", message));
        }
    };
    app.queue.order(command).await.map_err(queue_error)
}

fn queue_answer(answer: Result<Value, ApiError>) -> Response {
    match answer {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    }
}

fn queue_error(e: QueueError) -> ApiError {
    let status = match e {
        QueueError::NotSuspended(_) => StatusCode::NOT_FOUND,
        QueueError::Spool(_) | QueueError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    };
    let code = match e {
        QueueError::NotSuspended(_) => "not_suspended",
        QueueError::Spool(_) => "spool_error",
        QueueError::Stopping => "stopping",
    };
    ApiError::new(status, code, e.to_string())
}

/// Every recipient's message, ready to spool, or the first reason the request cannot be taken.
fn render(app: &App, request: &Request, peer: SocketAddr, key_name: &str) -> Result<Vec<Accepted>, ApiError> {
    if request.recipients.is_empty() {
        return Err(ApiError::invalid("recipients", "at least one recipient is needed"));
    }
    if request.recipients.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid(
            "recipients",
            format!("at most {MAX_RECIPIENTS} recipients per request"),
        ));
    }
    let spec = spec(request)?;
    // Message-IDs are `<REQUEST.N@domain>`: unique per request, as a campaign's are per run.
    let request_id = crate::send::new_campaign_id();
    let template = app
        .templates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&spec, &request_id)
        .map_err(|e| ApiError::invalid("content", e.to_string()))?;
    let request_id = minijinja::Value::from(request_id);
    let received_ms = now_ms();
    let trace = received_field(None, peer.ip(), &app.hostname, "HTTP", received_ms);
    let now = SystemTime::now();
    let mut messages = Vec::with_capacity(request.recipients.len());
    for (i, r) in request.recipients.iter().enumerate() {
        let field = |what: &str| format!("recipients[{i}]{what}");
        let email = Address::new(&r.email).map_err(|e| ApiError::invalid(field(".email"), e.to_string()))?;
        let mut vars = request.substitutions.clone();
        if let Some(name) = &r.name {
            vars.insert("name".into(), Value::String(name.clone()));
        }
        vars.extend(r.substitutions.iter().map(|(k, v)| (k.clone(), v.clone())));
        let row = Row { line: i as u64 + 1, email: email.clone(), vars: Vars::Json(vars) };
        let rendered =
            template.render_as(&row, &request_id, now).map_err(|e| ApiError::invalid(field(""), e))?;
        let content = app.intake.prepare(rendered.body.bytes(), &trace).map_err(ApiError::from)?;
        if content.len() as u64 > app.max_message_size {
            let message =
                format!("the message is {} octets, more than {}", content.len(), app.max_message_size);
            return Err(ApiError {
                field: Some(field("")),
                ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            });
        }
        messages.push(Accepted {
            sender: rendered.sender,
            recipients: vec![email],
            content,
            received_ms,
            origin: key_name.to_owned(),
        });
    }
    Ok(messages)
}

/// The request's content as a message template, its header fields checked.
fn spec(request: &Request) -> Result<MessageSpec, ApiError> {
    let mut spec = MessageSpec { mail_from: request.envelope_sender.clone(), ..MessageSpec::default() };
    if let Some(sender) = &request.envelope_sender {
        no_line_break("envelope_sender", sender)?;
    }
    match &request.content {
        Content::Raw(message) => spec.message = Some(message.clone()),
        Content::Built(b) => {
            for (field, value) in [
                ("content.from", Some(&b.from)),
                ("content.subject", b.subject.as_ref()),
                ("content.reply_to", b.reply_to.as_ref()),
            ] {
                if let Some(value) = value {
                    no_line_break(field, value)?;
                }
            }
            spec.from = Some(b.from.clone());
            spec.subject = b.subject.clone();
            spec.text = b.text.clone();
            spec.html = b.html.clone();
            if let Some(reply_to) = &b.reply_to {
                spec.headers.push(("Reply-To".into(), reply_to.clone()));
            }
            for (name, value) in &b.headers {
                let field = format!("content.headers.{name}");
                let valid_name = !name.is_empty() && name.bytes().all(|c| c.is_ascii_graphic() && c != b':');
                if !valid_name {
                    return Err(ApiError::invalid(field, "not a header field name"));
                }
                if BUILT_FIELDS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(ApiError::invalid(field, "set by the message's own fields"));
                }
                no_line_break(&field, value)?;
                spec.headers.push((name.clone(), value.clone()));
            }
            for (i, a) in b.attachments.iter().enumerate() {
                let field = format!("content.attachments[{i}]");
                no_line_break(&format!("{field}.filename"), &a.filename)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(a.data.as_bytes())
                    .map_err(|e| ApiError::invalid(format!("{field}.data"), format!("not base64: {e}")))?;
                let content_type =
                    a.content_type.clone().unwrap_or_else(|| content_type_for(&a.filename).to_owned());
                no_line_break(&format!("{field}.content_type"), &content_type)?;
                spec.attachments.push(Attachment { name: a.filename.clone(), content_type, bytes });
            }
        }
    }
    Ok(spec)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    // Sized for a one-recipient answer, so that it is written without growing.
    let mut text = Vec::with_capacity(256);
    // Writing a `Value` into memory cannot fail.
    let _ = serde_json::to_writer(&mut text, body);
    text.push(b'\n');
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], text).into_response()
}

/// A value that goes into a header field: a line break in it would start a field of the
/// caller's choosing (header injection).
fn no_line_break(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(ApiError::invalid(field, "must not contain CR, LF or NUL (header injection)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(json: &str) -> Result<Content, String> {
        serde_json::from_str::<Content>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn content_is_a_whole_message_or_an_object_of_its_parts() {
        assert!(
            matches!(content(r#""From: a@example.com\r\n\r\nhi""#), Ok(Content::Raw(m)) if m.ends_with("\r\n\r\nhi"))
        );
        let built = content(r#"{"from": "a@example.com", "subject": "s", "headers": {"X-A": "1"}}"#);
        assert!(
            matches!(&built, Ok(Content::Built(b)) if b.from == "a@example.com" && b.headers["X-A"] == "1"),
            "{built:?}"
        );
        // Anything else is named for what it is, and a part's mistake for the part.
        let number = content("5").unwrap_err();
        assert!(number.contains("a whole message as a string, or an object of its parts"), "{number}");
        let unknown = content(r#"{"from": "a@example.com", "subjetc": "s"}"#).unwrap_err();
        assert!(unknown.contains("unknown field `subjetc`"), "{unknown}");
        let missing = content(r#"{"subject": "s"}"#).unwrap_err();
        assert!(missing.contains("missing field `from`"), "{missing}");
    }
}
