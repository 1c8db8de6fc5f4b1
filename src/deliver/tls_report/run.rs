//! A run's TLS reports: one [`Recorder`] for the whole run, told by each destination whose
//! domain has an MTA-STS policy or whose MX hosts have DANE records (a [`PolicyWatch`] or a
//! [`DaneWatch`], once per session) and by the DNS thread when a policy cannot be fetched or a
//! host's records cannot be validated; at the end, one report per policy domain, written as
//! the RFC names its files (§5.3: `sender!policy-domain!begin!end.json`).
//!
//! A DANE policy's domain is the MX host's TLSA base domain (RFC 8460 §4.4: the records live at
//! `_25._tcp.HOST`), so DANE sessions are reported per MX host, not per recipient domain.
//!
//! The lock is taken once per session, never per message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::period::{self, Period};
use super::{Failure, PolicyDetails, PolicyType, Recorder, ResultType};
use crate::deliver::mta_sts::{MxPattern, Policy};
use crate::engine::{TlsObserver, TlsSeen};
use crate::tls::CertificateProblem;
use crate::tls::dane::Tlsa;

/// The run's recorder.
#[derive(Debug)]
pub struct TlsReports {
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    /// The period under way.
    recorder: Recorder,
    started: SystemTime,
    /// Sessions since the process started, by policy type and result (`None`: success), for
    /// metrics: never cut by a period's end, so they only grow.
    totals: BTreeMap<(PolicyType, Option<ResultType>), u64>,
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
        let current =
            Current { recorder: Recorder::default(), started: SystemTime::now(), totals: BTreeMap::new() };
        Arc::new(TlsReports { current: Mutex::new(current) })
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        // Nothing panics while holding it; a poisoned lock still holds whole counts.
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn success(&self, policy: &PolicyDetails) {
        let mut current = self.current();
        current.recorder.success(policy);
        *current.totals.entry((policy.kind, None)).or_default() += 1;
    }

    fn failure(&self, policy: &PolicyDetails, failure: Failure) {
        let mut current = self.current();
        *current.totals.entry((policy.kind, Some(failure.result))).or_default() += 1;
        current.recorder.failure(policy, failure);
    }

    /// Sessions (and failed policy lookups) since the start, by policy type and result
    /// (`None`: a success).
    pub fn totals(&self) -> Vec<(PolicyType, Option<ResultType>, u64)> {
        self.current().totals.iter().map(|(&(kind, result), &n)| (kind, result, n)).collect()
    }

    /// The watch for sessions to `domain`'s MX hosts under its `policy`.
    pub fn watch(self: &Arc<Self>, domain: &str, policy: &Policy) -> Arc<PolicyWatch> {
        Arc::new(PolicyWatch { reports: Arc::clone(self), policy: details(domain, Some(policy)) })
    }

    /// The watch for sessions to a destination whose MX hosts in `dane` have TLSA records:
    /// each such host's sessions count under its own DANE policy, the others' under
    /// `otherwise` (the recipient domain's MTA-STS policy), or nowhere.
    pub fn dane_watch(
        self: &Arc<Self>,
        dane: &[(&str, &Vec<Tlsa>)],
        otherwise: Option<Arc<dyn TlsObserver>>,
    ) -> Arc<DaneWatch> {
        let hosts = dane
            .iter()
            .map(|(host, records)| {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                let watch = PolicyWatch { reports: Arc::clone(self), policy: tlsa_details(&host, records) };
                (host, watch)
            })
            .collect();
        Arc::new(DaneWatch { hosts, otherwise })
    }

    /// `host`'s TLSA records could not be validated (`why`: bogus, or the lookup failed), so
    /// the host was not used (RFC 8460 §4.3.2 `dnssec-invalid`).
    pub fn dane_failed(&self, host: &str, why: &str) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let failure = Failure {
            result: ResultType::DnssecInvalid,
            sending_ip: None,
            mx_host: Some(host.clone()),
            receiving_ip: None,
            detail: None,
            reason: Some(why.to_owned()),
        };
        self.failure(&tlsa_details(&host, &[]), failure);
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
        self.failure(&details(domain, cached), failure);
    }

    /// Each policy domain's sessions (and failed fetches), in the period under way.
    pub fn tallies(&self) -> Vec<DomainTally> {
        let current = self.current();
        let recorder = &current.recorder;
        recorder
            .domains()
            .into_iter()
            .map(|domain| {
                let (successes, failures) = recorder.counts(domain);
                DomainTally { domain: domain.to_owned(), successes, failures }
            })
            .collect()
    }

    /// Writes each policy domain's report for the period so far into `dir` (see
    /// [`Period::write`]). Returns the files written.
    pub fn write(&self, dir: &Path, organization: &str, contact: &str) -> std::io::Result<Vec<PathBuf>> {
        let period = {
            let current = self.current();
            Period { recorder: current.recorder.clone(), start: current.started, end: SystemTime::now() }
        };
        period.write(dir, organization, contact)
    }

    /// Ends the period under way at `end`, which begins the next: its counts.
    pub fn take(&self, end: SystemTime) -> Period {
        let mut current = self.current();
        let recorder = std::mem::take(&mut current.recorder);
        let start = std::mem::replace(&mut current.started, end);
        Period { recorder, start, end }
    }

    /// Counts `period` again in the period under way (its report could not be written).
    pub fn put_back(&self, period: Period) {
        let mut current = self.current();
        current.recorder.merge(period.recorder);
        current.started = current.started.min(period.start);
    }

    /// The period under way, to keep across a restart ([`TlsReports::resume`]).
    pub fn saved(&self) -> Vec<u8> {
        let current = self.current();
        period::save(&current.recorder, current.started)
    }

    /// Takes up a period [`TlsReports::saved`] kept, in periods of `length`: if it is still
    /// under way, its counts and start become this one's; if it has ended, it is given back
    /// (ended at its period's end) to be reported.
    pub fn resume(&self, saved: &[u8], length: Duration) -> Result<Option<Period>, String> {
        let (recorder, start) = period::load(saved)?;
        let end = period::end_of(start, length);
        if end <= SystemTime::now() {
            return Ok(Some(Period { recorder, start, end }));
        }
        self.put_back(Period { recorder, start, end });
        Ok(None)
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

/// A DANE policy as a report names it (§4.4): `policy-type` tlsa, the host as its domain, its
/// records as the policy's strings.
fn tlsa_details(host: &str, records: &[Tlsa]) -> PolicyDetails {
    PolicyDetails {
        kind: PolicyType::Tlsa,
        strings: records.iter().map(Tlsa::to_string).collect(),
        domain: host.to_owned(),
        mx_hosts: Vec::new(),
    }
}

/// Counts a DANE destination's sessions: each host with records under its own policy.
#[derive(Debug)]
pub struct DaneWatch {
    hosts: Vec<(String, PolicyWatch)>,
    otherwise: Option<Arc<dyn TlsObserver>>,
}

impl TlsObserver for DaneWatch {
    fn seen(&self, seen: TlsSeen<'_>) {
        let host = match &seen {
            TlsSeen::Secured { host, .. }
            | TlsSeen::NotOffered { host, .. }
            | TlsSeen::Failed { host, .. } => host.map(|h| h.trim_end_matches('.')),
        };
        let own = host.and_then(|h| self.hosts.iter().find(|(name, _)| name.eq_ignore_ascii_case(h)));
        match (own, &self.otherwise) {
            (Some((_, watch)), _) => watch.seen(seen),
            (None, Some(otherwise)) => otherwise.seen(seen),
            (None, None) => {}
        }
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
            TlsSeen::Secured { .. } => return self.reports.success(&self.policy),
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
        self.reports.failure(&self.policy, failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::tls_report::ReportHeader;
    use serde_json::Value;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_dane_destination_reports_each_host_with_records_under_its_own_policy() {
        let reports = TlsReports::new();
        let policy = Policy::parse(b"version: STSv1\nmode: enforce\nmx: *.a.test\nmax_age: 600\n").unwrap();
        let records = vec![Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0xab; 32] }];
        let sts: Arc<dyn TlsObserver> = reports.watch("a.test", &policy);
        let watch = reports.dane_watch(&[("MX1.a.test.", &records)], Some(sts));
        let addr = "127.0.0.2:25".parse().unwrap();
        watch.seen(TlsSeen::Secured { addr, host: Some("mx1.a.test") });
        let why = "no TLSA record matches";
        let problem = Some(CertificateProblem::TlsaMismatch);
        watch.seen(TlsSeen::Failed { addr, host: Some("mx1.a.test"), problem, why });
        // A host without records: the domain's MTA-STS policy.
        watch.seen(TlsSeen::NotOffered { addr, host: Some("mx2.a.test") });
        reports.dane_failed("mx3.a.test", "bogus");
        assert_eq!(
            reports.tallies(),
            [
                DomainTally { domain: "a.test".into(), successes: 0, failures: 1 },
                DomainTally { domain: "mx1.a.test".into(), successes: 1, failures: 1 },
                DomainTally { domain: "mx3.a.test".into(), successes: 0, failures: 1 },
            ]
        );
        let current = reports.current();
        let recorder = &current.recorder;
        let header = ReportHeader {
            organization: "s.test".into(),
            contact: "postmaster@s.test".into(),
            report_id: "1".into(),
            start: UNIX_EPOCH,
            end: UNIX_EPOCH,
        };
        let mx1: Value = serde_json::from_str(&recorder.report_json("mx1.a.test", &header).unwrap()).unwrap();
        let p = &mx1["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "tlsa");
        assert_eq!(p["policy"]["policy-string"][0], format!("3 1 1 {}", "ab".repeat(32)));
        assert_eq!(p["failure-details"][0]["result-type"], "tlsa-invalid");
        let mx3: Value = serde_json::from_str(&recorder.report_json("mx3.a.test", &header).unwrap()).unwrap();
        assert_eq!(mx3["policies"][0]["failure-details"][0]["result-type"], "dnssec-invalid");
    }

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

    #[test]
    fn a_period_ends_whole_and_a_kept_one_is_taken_up_or_reported() {
        let day = Duration::from_secs(86_400);
        let reports = TlsReports::new();
        let policy = Policy::parse(b"version: STSv1\nmode: enforce\nmx: *.a.test\nmax_age: 600\n").unwrap();
        let watch = reports.watch("a.test", &policy);
        let addr = "127.0.0.2:25".parse().unwrap();
        watch.seen(TlsSeen::Secured { addr, host: Some("mx.a.test") });
        // Kept at a stop, taken up by the next process in the same period: one count of both.
        let kept = reports.saved();
        let next = TlsReports::new();
        next.watch("a.test", &policy).seen(TlsSeen::Secured { addr, host: Some("mx.a.test") });
        assert!(next.resume(&kept, day).unwrap().is_none());
        assert_eq!(next.tallies(), [DomainTally { domain: "a.test".into(), successes: 2, failures: 0 }]);
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let first = secs(reports.current().started);
        assert_eq!(secs(next.current().started), first, "the period began with the first process");
        // The period's end: its counts go, the next period starts empty at that end.
        let end = SystemTime::now();
        let ended = next.take(end);
        assert_eq!(ended.recorder.counts("a.test"), (2, 0));
        assert!(next.tallies().is_empty());
        assert_eq!(next.current().started, end);
        assert_eq!(next.totals(), [(PolicyType::Sts, None, 1)], "totals count this process's sessions");
        // Not written: counted again in the period under way.
        next.put_back(ended);
        assert_eq!(next.tallies()[0].successes, 2);
        // Kept in a period that has ended since: given back to be reported, ending at its end.
        let old = period::save(&reports.current().recorder, UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 5));
        let late = TlsReports::new();
        let ended = late.resume(&old, day).unwrap().expect("an ended period");
        assert_eq!(ended.end, UNIX_EPOCH + Duration::from_secs(86_400 * 4));
        assert!(late.tallies().is_empty());
        assert!(late.resume(b"{", day).is_err());
    }
}
