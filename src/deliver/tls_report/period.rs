//! One report period (RFC 8460 §4.1: a day, 00:00 to 24:00 UTC, by default): its counts, cut
//! at its end and written as one report file per policy domain; and the counts of a period
//! under way in a form that outlives the process (serve keeps it in its spool), so a restart
//! does not split a day into several reports or lose what was counted before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Failure, PolicyDetails, Recorder, ReportHeader, Tally};

/// A period's counts and when it began and ended.
#[derive(Debug, Clone)]
pub struct Period {
    pub recorder: Recorder,
    pub start: SystemTime,
    pub end: SystemTime,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Period {
    /// Writes each policy domain's report into `dir` (made if missing), named as the RFC
    /// names them (§5.3: `SUBMITTER!DOMAIN!BEGIN!END.json`): `organization` is the sender,
    /// `contact` where the domain's operators can write. A report whose file is already in
    /// `dir` or `dir/sent/` is left alone: it is this period's, written before a stop that
    /// came ahead of its counts being marked as written, and may have been sent already.
    /// Returns the files written.
    pub fn write(&self, dir: &Path, organization: &str, contact: &str) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let (start, end) = (secs(self.start), secs(self.end));
        let mut written = Vec::new();
        for domain in self.recorder.domains() {
            let name = format!("{organization}!{domain}!{start}!{end}.json");
            let path = dir.join(&name);
            if path.exists() || dir.join("sent").join(&name).exists() {
                continue;
            }
            let header = ReportHeader {
                organization: organization.to_owned(),
                contact: contact.to_owned(),
                report_id: format!("{start}.{domain}@{organization}"),
                start: self.start,
                end: self.end,
            };
            let Some(json) = self.recorder.report_json(domain, &header) else { continue };
            crate::deliver::write_synced(&path, json.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

/// When the period holding `t` ends: the next multiple of `length` since the Unix epoch, so a
/// day's periods end at midnight UTC.
pub fn end_of(t: SystemTime, length: Duration) -> SystemTime {
    let length = length.as_millis().max(1);
    let now = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let end = (now / length + 1) * length;
    UNIX_EPOCH + Duration::from_millis(u64::try_from(end).unwrap_or(u64::MAX))
}

/// A period under way, as it is kept: when it began and what was counted.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    start: u64,
    policies: Vec<SavedPolicy>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPolicy {
    policy: PolicyDetails,
    successes: u64,
    failures: Vec<(Failure, u64)>,
}

/// The counts since `start`, to keep (JSON).
pub fn save(recorder: &Recorder, start: SystemTime) -> Vec<u8> {
    let saved = Saved {
        start: secs(start),
        policies: recorder
            .policies
            .iter()
            .map(|(policy, tally)| SavedPolicy {
                policy: policy.clone(),
                successes: tally.successes,
                failures: tally.failures.iter().map(|(f, n)| (f.clone(), *n)).collect(),
            })
            .collect(),
    };
    // Plain data: serialising it cannot fail.
    serde_json::to_vec(&saved).unwrap_or_default()
}

/// What [`save`] kept: the counts and when they began.
pub fn load(bytes: &[u8]) -> Result<(Recorder, SystemTime), String> {
    let saved: Saved =
        serde_json::from_slice(bytes).map_err(|e| format!("not a saved TLS report period: {e}"))?;
    let mut policies = BTreeMap::new();
    for p in saved.policies {
        let tally = Tally { successes: p.successes, failures: p.failures.into_iter().collect() };
        policies.insert(p.policy, tally);
    }
    Ok((Recorder { policies }, UNIX_EPOCH + Duration::from_secs(saved.start)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::tls_report::{PolicyType, ResultType};

    fn policy(domain: &str) -> PolicyDetails {
        PolicyDetails {
            kind: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            domain: domain.into(),
            mx_hosts: vec!["*.a.test".into()],
        }
    }

    fn failure() -> Failure {
        Failure {
            result: ResultType::StarttlsNotSupported,
            sending_ip: None,
            mx_host: Some("mx.a.test".into()),
            receiving_ip: Some("127.0.0.2".parse().unwrap()),
            detail: None,
            reason: Some("no STARTTLS".into()),
        }
    }

    #[test]
    fn a_day_ends_at_midnight_utc() {
        let day = Duration::from_secs(86_400);
        // 2026-12-04T14:44:29Z.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_395_469);
        assert_eq!(end_of(t, day), UNIX_EPOCH + Duration::from_secs(1_796_428_800));
        // At midnight exactly, the next day's period is the one under way.
        let midnight = UNIX_EPOCH + Duration::from_secs(1_796_428_800);
        assert_eq!(end_of(midnight, day), midnight + day);
        assert_eq!(end_of(t, Duration::from_secs(60)), UNIX_EPOCH + Duration::from_secs(1_796_395_500));
    }

    #[test]
    fn saved_counts_come_back_whole_and_merge_with_new_ones() {
        let mut recorder = Recorder::default();
        recorder.success(&policy("a.test"));
        recorder.success(&policy("a.test"));
        recorder.failure(&policy("a.test"), failure());
        recorder.failure(&policy("b.test"), Failure { reason: None, ..failure() });
        let start = UNIX_EPOCH + Duration::from_secs(1_796_342_400);
        let (back, started) = load(&save(&recorder, start)).unwrap();
        assert_eq!(started, start);
        assert_eq!(back.counts("a.test"), (2, 1));
        assert_eq!(back.counts("b.test"), (0, 1));
        assert_eq!(back.policies.keys().collect::<Vec<_>>(), recorder.policies.keys().collect::<Vec<_>>());
        let mut now = Recorder::default();
        now.failure(&policy("a.test"), failure());
        now.merge(back);
        assert_eq!(now.counts("a.test"), (2, 2));
        let tally = &now.policies[&policy("a.test")];
        assert_eq!(tally.failures[&failure()], 2, "the same failure is one line, counted twice");
        assert!(load(b"{\"start\": 1}").is_err());
        assert!(load(b"garbage").is_err());
    }

    #[test]
    fn a_period_writes_each_report_once() {
        let dir = std::env::temp_dir().join(format!("volley-period-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut recorder = Recorder::default();
        recorder.success(&policy("a.test"));
        recorder.failure(&policy("b.test"), failure());
        let start = UNIX_EPOCH + Duration::from_secs(1_796_342_400);
        let period = Period { recorder, start, end: start + Duration::from_secs(86_400) };
        let files = period.write(&dir, "s.test", "postmaster@s.test").unwrap();
        let names: Vec<String> =
            files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["s.test!a.test!1796342400!1796428800.json", "s.test!b.test!1796342400!1796428800.json"]
        );
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(report["report-id"], "1796342400.a.test@s.test");
        assert_eq!(report["date-range"]["end-datetime"], "2026-12-05T00:00:00Z");
        // Written again (a restart before the counts were marked written): a.test's report was
        // sent meanwhile, b.test's waits; neither is written twice.
        std::fs::create_dir_all(dir.join("sent")).unwrap();
        std::fs::rename(&files[0], dir.join("sent").join(&names[0])).unwrap();
        assert!(period.write(&dir, "s.test", "postmaster@s.test").unwrap().is_empty());
        assert!(!files[0].exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
