//! TLS reporting (RFC 8460): what happened to TLS with each policy domain, counted as sessions
//! go (successes, and failures by the RFC's result types with where they happened), and the
//! aggregate report the domain asks for (§4: its JSON, gzip-compressed for sending). Sans-IO:
//! the session path tells the recorder, a report is made from it. [`run`] keeps a run's
//! recorder, fed by destinations' watches and the policy fetches, and writes its reports;
//! [`rua`] finds where a domain wants them and POSTs them over HTTPS; [`mail`] makes one a
//! message to deliver; [`outbox`] sends a directory of them (`volley tls-report send`, serve's
//! daily reports); [`period`] is one report period's counts, cut at its end, written as files
//! and kept across restarts; [`metrics`] shows the counts of a whole run.

pub mod mail;
pub mod metrics;
pub mod outbox;
pub mod period;
pub mod rua;
pub mod run;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What failed (RFC 8460 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    // Negotiation.
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    // DANE.
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    // MTA-STS.
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
    ];

    /// The RFC's name (as the report's JSON spells it).
    pub fn name(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// Which kind of policy applied (§4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub const ALL: [PolicyType; 3] = [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound];

    pub fn name(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a session was held to: its kind, domain, text (the STS policy's lines, or the
/// TLSA records) and the MX hosts it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyDetails {
    #[serde(rename = "policy-type")]
    pub kind: PolicyType,
    #[serde(rename = "policy-string", default, skip_serializing_if = "Vec::is_empty")]
    pub strings: Vec<String>,
    #[serde(rename = "policy-domain")]
    pub domain: String,
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_hosts: Vec<String>,
}

/// Where one kind of failure happened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Failure {
    pub result: ResultType,
    pub sending_ip: Option<IpAddr>,
    pub mx_host: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    /// A URI with more about the failure (§4.4 `additional-information`).
    pub detail: Option<String>,
    /// The error, as text (§4.4 `failure-reason-code`: a certificate's refusal, the policy
    /// fetch's error).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Tally {
    successes: u64,
    failures: BTreeMap<Failure, u64>,
}

/// Sessions counted per policy, for one report period.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    policies: BTreeMap<PolicyDetails, Tally>,
}

/// A report's header (§4.4).
#[derive(Debug, Clone)]
pub struct ReportHeader {
    pub organization: String,
    pub contact: String,
    pub report_id: String,
    pub start: SystemTime,
    pub end: SystemTime,
}

impl Recorder {
    /// A session that negotiated TLS as `policy` asks.
    pub fn success(&mut self, policy: &PolicyDetails) {
        self.tally(policy).successes += 1;
    }

    /// A session that failed as `failure` says.
    pub fn failure(&mut self, policy: &PolicyDetails, failure: Failure) {
        *self.tally(policy).failures.entry(failure).or_default() += 1;
    }

    /// Adds what `other` counted (the same period, counted apart: before a restart).
    pub fn merge(&mut self, other: Recorder) {
        for (policy, theirs) in other.policies {
            let ours = self.policies.entry(policy).or_default();
            ours.successes += theirs.successes;
            for (failure, n) in theirs.failures {
                *ours.failures.entry(failure).or_default() += n;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    fn tally(&mut self, policy: &PolicyDetails) -> &mut Tally {
        if !self.policies.contains_key(policy) {
            self.policies.insert(policy.clone(), Tally::default());
        }
        // Just inserted if it was missing.
        self.policies.get_mut(policy).unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// `domain`'s sessions counted: successful, failed (over every policy of it).
    pub fn counts(&self, domain: &str) -> (u64, u64) {
        self.policies.iter().filter(|(p, _)| p.domain == domain).fold((0, 0), |(ok, failed), (_, t)| {
            (ok + t.successes, failed + t.failures.values().sum::<u64>())
        })
    }

    /// The policy domains counted.
    pub fn domains(&self) -> Vec<&str> {
        let domains: std::collections::BTreeSet<&str> =
            self.policies.keys().map(|p| p.domain.as_str()).collect();
        domains.into_iter().collect()
    }

    /// `domain`'s report (every policy of it counted), as the RFC's JSON; `None` if nothing
    /// was counted for it.
    pub fn report_json(&self, domain: &str, header: &ReportHeader) -> Option<String> {
        let policies: Vec<PolicyReport> = self
            .policies
            .iter()
            .filter(|(p, _)| p.domain == domain)
            .map(|(policy, tally)| {
                let failed: u64 = tally.failures.values().sum();
                PolicyReport {
                    policy,
                    summary: Summary { successes: tally.successes, failures: failed },
                    failure_details: tally
                        .failures
                        .iter()
                        .map(|(f, n)| FailureDetails {
                            result: f.result,
                            sending_ip: f.sending_ip,
                            mx_host: f.mx_host.as_deref(),
                            receiving_ip: f.receiving_ip,
                            count: *n,
                            detail: f.detail.as_deref(),
                            reason: f.reason.as_deref(),
                        })
                        .collect(),
                }
            })
            .collect();
        if policies.is_empty() {
            return None;
        }
        let report = Report {
            organization: &header.organization,
            date_range: DateRange {
                start: humantime::format_rfc3339_seconds(header.start).to_string(),
                end: humantime::format_rfc3339_seconds(header.end).to_string(),
            },
            contact: &header.contact,
            report_id: &header.report_id,
            policies,
        };
        serde_json::to_string(&report).ok()
    }
}

/// A report gzip-compressed, as it is sent (`application/tlsrpt+gzip`, §5.3).
pub fn gzip(json: &str) -> std::io::Result<Vec<u8>> {
    let mut out =
        mail_auth::flate2::write::GzEncoder::new(Vec::new(), mail_auth::flate2::Compression::default());
    out.write_all(json.as_bytes())?;
    out.finish()
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(rename = "organization-name")]
    organization: &'a str,
    #[serde(rename = "date-range")]
    date_range: DateRange,
    #[serde(rename = "contact-info")]
    contact: &'a str,
    #[serde(rename = "report-id")]
    report_id: &'a str,
    policies: Vec<PolicyReport<'a>>,
}

#[derive(Serialize)]
struct DateRange {
    #[serde(rename = "start-datetime")]
    start: String,
    #[serde(rename = "end-datetime")]
    end: String,
}

#[derive(Serialize)]
struct PolicyReport<'a> {
    policy: &'a PolicyDetails,
    summary: Summary,
    #[serde(rename = "failure-details", skip_serializing_if = "Vec::is_empty")]
    failure_details: Vec<FailureDetails<'a>>,
}

#[derive(Serialize)]
struct Summary {
    #[serde(rename = "total-successful-session-count")]
    successes: u64,
    #[serde(rename = "total-failure-session-count")]
    failures: u64,
}

#[derive(Serialize)]
struct FailureDetails<'a> {
    #[serde(rename = "result-type")]
    result: ResultType,
    #[serde(rename = "sending-mta-ip", skip_serializing_if = "Option::is_none")]
    sending_ip: Option<IpAddr>,
    #[serde(rename = "receiving-mx-hostname", skip_serializing_if = "Option::is_none")]
    mx_host: Option<&'a str>,
    #[serde(rename = "receiving-ip", skip_serializing_if = "Option::is_none")]
    receiving_ip: Option<IpAddr>,
    #[serde(rename = "failed-session-count")]
    count: u64,
    #[serde(rename = "additional-information", skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(rename = "failure-reason-code", skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::{Duration, UNIX_EPOCH};

    /// RFC 8460 §4.4's example, as volley would record it: one STS policy, 5,326 sessions
    /// good, 303 failed in two ways.
    #[test]
    fn the_rfcs_example_report() {
        let policy = PolicyDetails {
            kind: PolicyType::Sts,
            strings: vec![
                "version: STSv1".into(),
                "mode: testing".into(),
                "mx: *.mail.company-y.example".into(),
                "max_age: 86400".into(),
            ],
            domain: "company-y.example".into(),
            mx_hosts: vec!["*.mail.company-y.example".into()],
        };
        let mut recorder = Recorder::default();
        for _ in 0..5326 {
            recorder.success(&policy);
        }
        let mismatch = Failure {
            result: ResultType::CertificateExpired,
            sending_ip: Some("2001:db8:abcd:0012::1".parse().unwrap()),
            mx_host: Some("mx1.mail.company-y.example".into()),
            receiving_ip: Some("203.0.113.56".parse().unwrap()),
            detail: None,
            reason: None,
        };
        let starttls = Failure {
            result: ResultType::StarttlsNotSupported,
            sending_ip: Some("2001:db8:abcd:0013::1".parse().unwrap()),
            mx_host: Some("mx2.mail.company-y.example".into()),
            receiving_ip: Some("203.0.113.57".parse().unwrap()),
            detail: Some(
                "https://reports.company-x.example/report_info?id=5065427c-23d3#StarttlsNotSupported".into(),
            ),
            reason: None,
        };
        for _ in 0..100 {
            recorder.failure(&policy, mismatch.clone());
        }
        for _ in 0..200 {
            recorder.failure(&policy, starttls.clone());
        }
        let validation = Failure {
            result: ResultType::ValidationFailure,
            sending_ip: Some("198.51.100.62".parse().unwrap()),
            mx_host: Some("mx-backup.mail.company-y.example".into()),
            receiving_ip: Some("203.0.113.58".parse().unwrap()),
            detail: None,
            reason: None,
        };
        for _ in 0..3 {
            recorder.failure(&policy, validation.clone());
        }
        let header = ReportHeader {
            organization: "Company-X".into(),
            contact: "sts-reporting@company-x.example".into(),
            report_id: "5065427c-23d3-47ca-b6e0-946ea0e8c4be".into(),
            start: UNIX_EPOCH + Duration::from_secs(1_459_468_800), // 2016-04-01T00:00:00Z
            end: UNIX_EPOCH + Duration::from_secs(1_459_555_199),
        };
        let report: Value =
            serde_json::from_str(&recorder.report_json("company-y.example", &header).unwrap()).unwrap();
        assert_eq!(report["organization-name"], "Company-X");
        assert_eq!(
            report["date-range"],
            json!({"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"})
        );
        assert_eq!(report["report-id"], "5065427c-23d3-47ca-b6e0-946ea0e8c4be");
        let p = &report["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "company-y.example");
        assert_eq!(p["policy"]["mx-host"], json!(["*.mail.company-y.example"]));
        assert_eq!(
            p["summary"],
            json!({"total-successful-session-count": 5326, "total-failure-session-count": 303})
        );
        let details = p["failure-details"].as_array().unwrap();
        assert_eq!(details.len(), 3);
        let starttls = details.iter().find(|d| d["result-type"] == "starttls-not-supported").unwrap();
        assert_eq!(starttls["failed-session-count"], 200);
        assert_eq!(starttls["receiving-mx-hostname"], "mx2.mail.company-y.example");
        assert_eq!(starttls["sending-mta-ip"], "2001:db8:abcd:13::1");
        assert!(
            details
                .iter()
                .any(|d| d["result-type"] == "certificate-expired" && d["failed-session-count"] == 100)
        );
        assert!(
            details
                .iter()
                .any(|d| d["result-type"] == "validation-failure" && d["failed-session-count"] == 3)
        );
        assert_eq!(recorder.report_json("other.example", &header), None);
        let other = PolicyDetails {
            kind: PolicyType::NoPolicyFound,
            strings: vec![],
            domain: "a.example".into(),
            mx_hosts: vec![],
        };
        recorder.success(&other);
        assert_eq!(recorder.domains(), vec!["a.example", "company-y.example"], "each domain once, in order");
    }

    #[test]
    fn a_report_is_sent_gzipped() {
        use std::io::Read as _;
        let json = r#"{"report-id": "x"}"#;
        let packed = gzip(json).unwrap();
        let mut back = String::new();
        mail_auth::flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut back).unwrap();
        assert_eq!(back, json);
    }

    #[test]
    fn every_result_type_has_the_rfcs_name() {
        let names: Vec<String> = ResultType::ALL
            .iter()
            .map(|r| serde_json::to_value(r).unwrap().as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ResultType::ALL.map(ResultType::name));
        for p in PolicyType::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        assert_eq!(
            names,
            [
                "starttls-not-supported",
                "certificate-host-mismatch",
                "certificate-expired",
                "certificate-not-trusted",
                "validation-failure",
                "tlsa-invalid",
                "dnssec-invalid",
                "dane-required",
                "sts-policy-fetch-error",
                "sts-policy-invalid",
                "sts-webpki-invalid",
            ]
        );
        assert_eq!(serde_json::to_value(PolicyType::NoPolicyFound).unwrap(), "no-policy-found");
    }
}
