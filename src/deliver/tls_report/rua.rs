//! Where a policy domain wants its TLS reports (RFC 8460 §3): the `rua` of its one
//! `v=TLSRPTv1` TXT record at `_smtp._tls.DOMAIN`, parsed by mail-auth; and the HTTPS way of
//! sending one (§5.4: a POST of the gzip-compressed report, `application/tlsrpt+gzip`, the
//! certificate checked, a 2xx answer meaning received). The mail way is a message built from
//! [`super::mail`], delivered like any other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::mta_sts::{ReportUri, TlsRpt};

/// How long one POST may take, connecting included.
pub const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// One place to send a domain's reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rua {
    /// `mailto:ADDRESS`.
    Mail(String),
    /// An `https://` URL.
    Https(String),
}

impl std::fmt::Display for Rua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rua::Mail(address) => write!(f, "mailto:{address}"),
            Rua::Https(url) => f.write_str(url),
        }
    }
}

/// Why a domain's reporting addresses are not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuaError {
    /// The lookup failed (a timeout, SERVFAIL): try again later.
    #[error("_smtp._tls.{domain}: {why}")]
    Lookup { domain: String, why: String },
    /// The record is there but cannot be used (§3: exactly one, that parses).
    #[error("_smtp._tls.{domain}: {why}")]
    Record { domain: String, why: String },
}

/// The places `records` (the TXT strings at `_smtp._tls.DOMAIN`) name, in the record's order;
/// empty when there is no TLS-RPT record (the domain asks for no reports). Only `https:` and
/// `mailto:` URIs are kept (§3: others are ignored).
pub fn parse(domain: &str, records: &[String]) -> Result<Vec<Rua>, RuaError> {
    let rpt: Vec<&String> = records.iter().filter(|r| r.trim_start().starts_with("v=TLSRPTv1")).collect();
    let bad = |why: String| RuaError::Record { domain: domain.to_owned(), why };
    match rpt.as_slice() {
        [] => Ok(Vec::new()),
        [one] => {
            let record =
                TlsRpt::parse(one.as_bytes()).map_err(|e| bad(format!("{one:?} does not parse: {e}")))?;
            let rua: Vec<Rua> = record
                .rua
                .into_iter()
                .filter_map(|uri| match uri {
                    ReportUri::Mail(address) if address.contains('@') => Some(Rua::Mail(address)),
                    ReportUri::Http(url) if url.to_ascii_lowercase().starts_with("https://") => {
                        Some(Rua::Https(url))
                    }
                    _ => None,
                })
                .collect();
            if rua.is_empty() {
                return Err(bad(format!("{one:?} names no mailto: or https: address")));
            }
            Ok(rua)
        }
        many => Err(bad(format!("{} TLS-RPT records (RFC 8460 §3: exactly one)", many.len()))),
    }
}

/// `domain`'s reporting addresses, asked of `resolver`.
pub async fn lookup(resolver: &TokioResolver, domain: &str) -> Result<Vec<Rua>, RuaError> {
    let domain = domain.trim_end_matches('.');
    match resolver.txt_lookup(format!("_smtp._tls.{domain}.").as_str()).await {
        Ok(txt) => {
            let records: Vec<String> = txt.iter().map(crate::deliver::dns::txt_text).collect();
            parse(domain, &records)
        }
        Err(e) if crate::deliver::dns::no_records(&e) || crate::deliver::dns::no_such_domain(&e) => {
            Ok(Vec::new())
        }
        Err(e) => Err(RuaError::Lookup { domain: domain.to_owned(), why: e.to_string() }),
    }
}

/// An `https://HOST[:PORT]/PATH` URL's parts.
fn split_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.get(..8).filter(|s| s.eq_ignore_ascii_case("https://")).map(|_| &url[8..])?;
    let (authority, path) =
        rest.split_once('/').map_or((rest, String::from("/")), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[ADDR]` or `[ADDR]:PORT`.
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after {
                "" => (host, 443),
                _ => (host, after.strip_prefix(':')?.parse().ok()?),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, 443),
        },
    };
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some((host.to_ascii_lowercase(), port, path))
}

/// POSTs `gzipped` (a report, as [`super::gzip`] made it) to `url`, the host's address from
/// `resolver` and its certificate checked with `tls`, within [`POST_TIMEOUT`]. `Ok` when the
/// server answered 2xx (§5.4), else why not.
pub async fn post(
    resolver: &TokioResolver,
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    gzipped: Vec<u8>,
) -> Result<u16, String> {
    let (host, port, path) = split_url(url).ok_or_else(|| format!("{url}: not an https://HOST/PATH URL"))?;
    let exchange = async {
        let ip = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => resolver
                .lookup_ip(format!("{host}.").as_str())
                .await
                .map_err(|e| format!("{host}: {e}"))?
                .iter()
                .next()
                .ok_or_else(|| format!("{host}: no address"))?,
        };
        let mut sender = crate::rt::http_client::connect_at(SocketAddr::new(ip, port), &host, tls).await?;
        let authority = if port == 443 { host.clone() } else { format!("{host}:{port}") };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(Full::new(Bytes::from(gzipped)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // Read (a little of) the answer, so the server sees the exchange through.
        let _ = Limited::new(response.into_body(), 64 * 1024).collect().await;
        match status {
            200..=299 => Ok(status),
            _ => Err(format!("{url}: answered {status}")),
        }
    };
    tokio::time::timeout(POST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no answer within {POST_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_mail_and_https_addresses() {
        let records = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse(
                "a.test",
                &records(&["v=spf1 -all", "v=TLSRPTv1; rua=mailto:tls@a.test,https://r.a.test/v1/tlsrpt"])
            ),
            Ok(vec![Rua::Mail("tls@a.test".into()), Rua::Https("https://r.a.test/v1/tlsrpt".into())])
        );
        // No record: no reports wanted.
        assert_eq!(parse("a.test", &records(&["v=spf1 -all"])), Ok(vec![]));
        let two = records(&["v=TLSRPTv1; rua=mailto:a@a.test", "v=TLSRPTv1; rua=mailto:b@a.test"]);
        assert!(matches!(parse("a.test", &two), Err(RuaError::Record { .. })));
        // Only http: is not a place to send to (§3: https).
        assert!(matches!(
            parse("a.test", &records(&["v=TLSRPTv1; rua=http://r.a.test/"])),
            Err(RuaError::Record { .. })
        ));
        assert!(matches!(parse("a.test", &records(&["v=TLSRPTv1; nonsense"])), Err(RuaError::Record { .. })));
        assert_eq!(Rua::Mail("x@a.test".into()).to_string(), "mailto:x@a.test");
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("https://R.a.test/v1/tlsrpt"),
            Some(("r.a.test".into(), 443, "/v1/tlsrpt".into()))
        );
        assert_eq!(split_url("https://r.a.test:8443"), Some(("r.a.test".into(), 8443, "/".into())));
        assert_eq!(split_url("HTTPS://[::1]:8443/x"), Some(("::1".into(), 8443, "/x".into())));
        assert_eq!(split_url("https://[::1]/x"), Some(("::1".into(), 443, "/x".into())));
        for bad in ["http://r.a.test/", "https://", "https://u@r.a.test/", "https://r.a.test:x/"] {
            assert_eq!(split_url(bad), None, "{bad}");
        }
    }
}
