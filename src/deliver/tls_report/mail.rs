//! A TLS report as mail (RFC 8460 §5.3): a `multipart/report; report-type="tlsrpt"` message
//! with the `TLS-Report-Domain` and `TLS-Report-Submitter` fields, the Subject the RFC gives,
//! a short text part, and the report gzip-compressed as an `application/tlsrpt+gzip`
//! attachment named `SUBMITTER!DOMAIN!BEGIN!END.json.gz`. Made as a message template and its
//! values, so it is rendered, signed and delivered the way every other message is.

use base64::Engine as _;

/// The message, a template over a report's [`values`]: From, To, Date and Message-ID are added
/// as for any template (From from the sender's `--from`).
pub const TEMPLATE: &str = "\
Subject: Report Domain: {{ report_domain }} Submitter: {{ submitter }} Report-ID: <{{ report_id }}>
TLS-Report-Domain: {{ report_domain }}
TLS-Report-Submitter: {{ submitter }}
Auto-Submitted: auto-generated
MIME-Version: 1.0
Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"volley-tlsrpt\"

This is an aggregate TLS report (RFC 8460).

--volley-tlsrpt
Content-Type: text/plain; charset=us-ascii

This is an aggregate TLS report from {{ submitter }}.

Report Domain: {{ report_domain }}
Submitter: {{ submitter }}
Report-ID: {{ report_id }}

--volley-tlsrpt
Content-Type: application/tlsrpt+gzip
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename=\"{{ filename }}\"

{{ report }}
--volley-tlsrpt--
";

/// One report, as the mail carries it.
#[derive(Debug, Clone)]
pub struct ReportMail<'a> {
    /// The policy domain the report is about.
    pub domain: &'a str,
    /// Who sends it (the report's organization: the sender's host name).
    pub submitter: &'a str,
    pub report_id: &'a str,
    /// The report's file name without `.json` (`SUBMITTER!DOMAIN!BEGIN!END`).
    pub stem: &'a str,
    /// The report, gzip-compressed.
    pub gzipped: &'a [u8],
}

/// The template's values for `report` sent to `to`, as a JSON object (a row of recipients).
pub fn values(to: &str, report: &ReportMail<'_>) -> serde_json::Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(report.gzipped);
    // Lines of 76 characters (RFC 2045 §6.8); the message's encoder makes them end in CRLF.
    let lines: Vec<&str> =
        encoded.as_bytes().chunks(76).map(|chunk| std::str::from_utf8(chunk).unwrap_or_default()).collect();
    serde_json::json!({
        "email": to,
        "report_domain": report.domain,
        "submitter": report.submitter,
        "report_id": report.report_id,
        "filename": format!("{}.json.gz", report.stem),
        "report": lines.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attachment_is_the_gzipped_report_in_base64_lines() {
        let gzipped: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let report = ReportMail {
            domain: "a.test",
            submitter: "s.test",
            report_id: "1.a.test@s.test",
            stem: "s.test!a.test!1!2",
            gzipped: &gzipped,
        };
        let v = values("tls@a.test", &report);
        assert_eq!(v["email"], "tls@a.test");
        assert_eq!(v["filename"], "s.test!a.test!1!2.json.gz");
        let text = v["report"].as_str().unwrap();
        assert!(text.lines().all(|l| l.len() <= 76), "{text}");
        let back = base64::engine::general_purpose::STANDARD.decode(text.replace('\n', "")).unwrap();
        assert_eq!(back, gzipped);
    }
}
