//! A run's TLS reports: one [`Recorder`] for the whole run, told by each destination whose
//! domain has an MTA-STS policy (a [`PolicyWatch`], once per session) and by the DNS thread
//! when a policy cannot be fetched; at the end, one report per policy domain, written as the
//! RFC names its files (§5.3: `sender!policy-domain!begin!end.json`).
//!
//! The lock is taken once per session, never per message.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Failure, PolicyDetails, PolicyType, Recorder, ReportHeader, ResultType};
use crate::deliver::mta_sts::{MxPattern, Policy};
use crate::engine::{TlsObserver, TlsSeen};
use crate::tls::CertificateProblem;

/// The run's recorder.
#[derive(Debug)]
pub struct TlsReports {
    recorder: Mutex<Recorder>,
    started: SystemTime,
}

/// One policy domain's figures, for the run's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainTally {
    pub domain: String,
    pub successes: u64,
    pub failures: u64,
}

impl TlsReports {
    pub fn new() -> Arc<TlsReports> {
        Arc::new(TlsReports { recorder: Mutex::new(Recorder::default()), started: SystemTime::now() })
    }

    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        // Nothing panics while holding it; a poisoned lock still holds whole counts.
        self.recorder.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The watch for sessions to `domain`'s MX hosts under its `policy`.
    pub fn watch(self: &Arc<Self>, domain: &str, policy: &Policy) -> Arc<PolicyWatch> {
        Arc::new(PolicyWatch { reports: Arc::clone(self), policy: details(domain, Some(policy)) })
    }

    /// `domain`'s policy could not be fetched (`why`); `cached`: the policy that holds meanwhile.
    pub fn fetch_failed(&self, domain: &str, cached: Option<&Policy>, why: &str) {
        let failure = Failure {
            result: ResultType::StsPolicyFetchError,
            sending_ip: None,
            mx_host: None,
            receiving_ip: None,
            detail: None,
            reason: Some(why.to_owned()),
        };
        self.recorder().failure(&details(domain, cached), failure);
    }

    /// Each policy domain's sessions (and failed fetches), so far.
    pub fn tallies(&self) -> Vec<DomainTally> {
        let recorder = self.recorder();
        recorder
            .domains()
            .into_iter()
            .map(|domain| {
                let (successes, failures) = recorder.counts(domain);
                DomainTally { domain: domain.to_owned(), successes, failures }
            })
            .collect()
    }

    /// Writes each policy domain's report for the run so far into `dir` (made if missing):
    /// `organization` names the sender, `contact` is where the domain's operators can write.
    /// Returns the files written.
    pub fn write(&self, dir: &Path, organization: &str, contact: &str) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let end = SystemTime::now();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let recorder = self.recorder();
        let mut written = Vec::new();
        for domain in recorder.domains() {
            let header = ReportHeader {
                organization: organization.to_owned(),
                contact: contact.to_owned(),
                report_id: format!("{}.{domain}@{organization}", secs(self.started)),
                start: self.started,
                end,
            };
            let Some(json) = recorder.report_json(domain, &header) else { continue };
            let path = dir.join(format!("{organization}!{domain}!{}!{}.json", secs(self.started), secs(end)));
            crate::deliver::write_synced(&path, json.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The policy as a report names it (§4.4): its lines and MX patterns; `None`: no policy.
fn details(domain: &str, policy: Option<&Policy>) -> PolicyDetails {
    match policy {
        Some(policy) => PolicyDetails {
            kind: PolicyType::Sts,
            strings: policy.to_text().lines().map(str::to_owned).collect(),
            domain: domain.to_owned(),
            mx_hosts: policy
                .mx
                .iter()
                .map(|p| match p {
                    MxPattern::Exact(name) => name.clone(),
                    MxPattern::Wildcard(suffix) => format!("*.{suffix}"),
                })
                .collect(),
        },
        None => PolicyDetails {
            kind: PolicyType::NoPolicyFound,
            strings: Vec::new(),
            domain: domain.to_owned(),
            mx_hosts: Vec::new(),
        },
    }
}

/// Counts one domain's sessions under its policy.
#[derive(Debug)]
pub struct PolicyWatch {
    reports: Arc<TlsReports>,
    policy: PolicyDetails,
}

impl TlsObserver for PolicyWatch {
    fn seen(&self, seen: TlsSeen<'_>) {
        let (result, addr, host, reason) = match seen {
            TlsSeen::Secured { .. } => return self.reports.recorder().success(&self.policy),
            TlsSeen::NotOffered { addr, host } => (ResultType::StarttlsNotSupported, addr, host, None),
            TlsSeen::Failed { addr, host, problem, why } => {
                let result = match problem {
                    Some(CertificateProblem::HostMismatch) => ResultType::CertificateHostMismatch,
                    Some(CertificateProblem::Expired) => ResultType::CertificateExpired,
                    Some(CertificateProblem::NotTrusted) => ResultType::CertificateNotTrusted,
                    Some(CertificateProblem::TlsaMismatch) => ResultType::TlsaInvalid,
                    Some(CertificateProblem::Other) | None => ResultType::ValidationFailure,
                };
                (result, addr, host, Some(why.to_owned()))
            }
        };
        let failure = Failure {
            result,
            sending_ip: None,
            mx_host: host.map(str::to_owned),
            receiving_ip: Some(addr.ip()),
            detail: None,
            reason,
        };
        self.reports.recorder().failure(&self.policy, failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn sessions_and_fetches_become_each_domains_report_file() {
        let reports = TlsReports::new();
        let policy = Policy::parse(b"version: STSv1\nmode: enforce\nmx: *.a.test\nmax_age: 600\n").unwrap();
        let watch = reports.watch("a.test", &policy);
        let addr = "127.0.0.2:25".parse().unwrap();
        let host = Some("mx.a.test");
        watch.seen(TlsSeen::Secured { addr, host });
        watch.seen(TlsSeen::Secured { addr, host });
        watch.seen(TlsSeen::NotOffered { addr, host });
        let why = "certificate refused: not for the name";
        let problem = Some(CertificateProblem::HostMismatch);
        watch.seen(TlsSeen::Failed { addr, host, problem, why });
        reports.fetch_failed("b.test", None, "mta-sts.b.test: answered 404");
        assert_eq!(
            reports.tallies(),
            [
                DomainTally { domain: "a.test".into(), successes: 2, failures: 2 },
                DomainTally { domain: "b.test".into(), successes: 0, failures: 1 },
            ]
        );
        let dir = std::env::temp_dir().join(format!("volley-tlsrpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = reports.write(&dir, "volley.example", "postmaster@volley.example").unwrap();
        assert_eq!(files.len(), 2);
        let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("volley.example!a.test!") && name.ends_with(".json"), "{name}");
        let report: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(report["contact-info"], "postmaster@volley.example");
        let p = &report["policies"][0];
        assert_eq!(p["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(p["policy"]["mx-host"][0], "*.a.test");
        assert_eq!(p["summary"]["total-failure-session-count"], 2);
        let details = p["failure-details"].as_array().unwrap();
        assert!(details.iter().any(|d| d["result-type"] == "starttls-not-supported"
            && d["receiving-ip"] == "127.0.0.2"
            && d["receiving-mx-hostname"] == "mx.a.test"));
        assert!(
            details
                .iter()
                .any(|d| d["result-type"] == "certificate-host-mismatch" && d["failure-reason-code"] == why)
        );
        let b: Value = serde_json::from_slice(&std::fs::read(&files[1]).unwrap()).unwrap();
        assert_eq!(b["policies"][0]["policy"]["policy-type"], "no-policy-found");
        assert_eq!(b["policies"][0]["failure-details"][0]["result-type"], "sts-policy-fetch-error");
    }
}
