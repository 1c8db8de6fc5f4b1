//! A domain's MTA-STS policy as delivery needs it, found on the DNS thread beside its MX hosts:
//! the `_mta-sts` TXT record, the cache's decision, and (only when the record names a policy
//! not cached) the fetch. The send path never waits on it: a recipient waits for its domain's
//! route, which is ready when both the MX hosts and the policy are known.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;

use super::cache::{Cache, Decision};
use super::fetch::Fetcher;
use super::{Mode, Policy, record_id};
use crate::deliver::tls_report::run::TlsReports;
use crate::tls::{CertificateCheck, ClientTls, TlsError, TlsPolicy};

/// The longest the cache file goes unwritten after a new policy (a crash then costs at most
/// the fetches of this long, made again at the next run); it is also written when the DNS
/// thread ends.
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// How MTA-STS is looked up.
#[derive(Debug, Clone)]
pub struct StsConfig {
    pub fetcher: Fetcher,
    /// The same check as the fetcher's, made after a handshake that did not check (a policy
    /// in testing mode: its failures are reported).
    pub check: CertificateCheck,
    /// Where policies are kept between runs (`None`: in memory only).
    pub cache_file: Option<PathBuf>,
}

impl StsConfig {
    /// Certificates (of policy servers and of MX hosts under a policy) checked against
    /// `ca_file`'s, else Mozilla's roots; policies fetched from `port`.
    pub fn new(
        ca_file: Option<&Path>,
        port: u16,
        cache_file: Option<PathBuf>,
    ) -> Result<StsConfig, TlsError> {
        let tls = ClientTls::new(TlsPolicy::Verify, false, ca_file, false)?.config;
        Ok(StsConfig {
            fetcher: Fetcher { tls, port, timeout: super::fetch::TIMEOUT },
            check: CertificateCheck::new(ca_file)?,
            cache_file,
        })
    }
}

/// What destinations of domains with a policy are given: the configuration an enforced
/// policy's sessions use (the fetch's: the same checks), the check of a testing policy's, and
/// the run's TLS reports.
#[derive(Debug, Clone)]
pub struct StsTls {
    pub verifier: Arc<rustls::ClientConfig>,
    pub check: CertificateCheck,
    pub reports: Arc<TlsReports>,
}

/// The DNS thread's MTA-STS state: the cache, shared by its lookups.
pub(crate) struct Sts {
    fetcher: Fetcher,
    cache: Mutex<Cache>,
    file: Option<PathBuf>,
    /// When the file was last written, and whether the cache changed since.
    saved: Mutex<(Instant, bool)>,
    reports: Arc<TlsReports>,
    /// A policy was fetched for a route: the refresher's wait is worked out again (the new
    /// policy's `max_age` may be shorter than any before).
    fetched: tokio::sync::Notify,
}

impl Sts {
    /// Reads the cache file (missing: empty; not a cache file: an error, so a wrong path does
    /// not get overwritten).
    pub fn open(config: StsConfig, reports: Arc<TlsReports>) -> std::io::Result<Sts> {
        let cache = match &config.cache_file {
            Some(path) => Cache::load(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("MTA-STS cache {}: {e}", path.display()))
            })?,
            None => Cache::default(),
        };
        Ok(Sts {
            fetcher: config.fetcher,
            cache: Mutex::new(cache),
            file: config.cache_file,
            saved: Mutex::new((Instant::now(), false)),
            reports,
            fetched: tokio::sync::Notify::new(),
        })
    }

    /// The policy that applies to `domain` now (`None`: none does, so delivery is as without
    /// MTA-STS). A lookup or fetch that fails leaves a cached policy still valid in force
    /// (RFC 8461 §5.1), and otherwise no policy (§5: senders deliver as before when they cannot
    /// learn one).
    pub async fn policy(&self, resolver: &TokioResolver, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.');
        let id = record(resolver, domain).await;
        let now = unix_now();
        let decision = self.lock_cache().decide(domain, id.as_deref(), now);
        let policy = match decision {
            Decision::Use(policy) => {
                self.lock_cache().used(domain, now);
                Some(policy)
            }
            Decision::NoPolicy => None,
            Decision::Fetch { fallback } => match (fetch(&self.fetcher, resolver, domain).await, id) {
                (Ok(policy), Some(id)) => {
                    self.lock_cache().fetched(domain, &id, policy.clone(), now);
                    self.changed();
                    self.fetched.notify_one();
                    Some(policy)
                }
                (Err(why), _) => {
                    self.reports.fetch_failed(domain, fallback.as_ref(), &why);
                    if fallback.is_some() {
                        self.lock_cache().used(domain, now);
                    }
                    fallback
                }
                (Ok(_), None) => fallback,
            },
        };
        policy.filter(|p| p.mode != Mode::None)
    }

    /// Fetches again, in the background, the policies in use that are past half their
    /// `max_age` ([`Cache::to_refresh`]), then waits for the next to come due; for as long as
    /// the DNS thread runs. The record is asked first: a new id gets its new policy; a record
    /// gone, or a fetch that fails, leaves the cached policy to hold until it expires (and it
    /// is tried again at the next look).
    pub async fn refresh_forever(&self, resolver: &TokioResolver) {
        let look = || Instant::now() + Duration::from_secs(self.lock_cache().look_again_in());
        let mut next = look();
        // Domains whose refresh fails, until one succeeds.
        let mut failing = std::collections::HashSet::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                // Sooner if the new policy asks for it; never later, so that new policies
                // coming all the time cannot put the refresh off.
                () = self.fetched.notified() => {
                    next = next.min(look());
                    continue;
                }
            }
            next = look();
            let due = self.lock_cache().to_refresh(unix_now());
            for domain in due {
                let fetched = match record(resolver, &domain).await {
                    Some(id) => fetch(&self.fetcher, resolver, &domain).await.map(|policy| (id, policy)),
                    None => Err(format!("_mta-sts.{domain}: no policy record")),
                };
                match fetched {
                    Ok((id, policy)) => {
                        failing.remove(&domain);
                        self.lock_cache().refreshed(&domain, &id, policy, unix_now());
                        self.changed();
                    }
                    // Said once per failing spell: an operator learns the cached policy is not
                    // being renewed (it holds until it expires), without a line every look.
                    Err(why) => {
                        if failing.insert(domain.clone()) {
                            eprintln!(
                                "volley: warning: the MTA-STS policy of {domain} could not be fetched again \
                                 ({why}); the cached one holds until it expires"
                            );
                        }
                    }
                }
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Never held across an await, and nothing panics while holding it; a poisoned lock
        // still holds a whole cache.
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self) {
        let due = {
            let mut saved = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            saved.1 = true;
            saved.0.elapsed() >= SAVE_EVERY
        };
        if due {
            self.save();
        }
    }

    /// Writes the cache file if the cache changed since it was last written. A failure is
    /// reported, not fatal: delivery goes on, and the policies are fetched again next run.
    pub fn save(&self) {
        let Some(path) = &self.file else { return };
        {
            let mut saved = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !saved.1 {
                return;
            }
            *saved = (Instant::now(), false);
        }
        let mut cache = self.lock_cache().clone();
        cache.expire(unix_now());
        if let Err(e) = cache.save(path) {
            eprintln!("volley: warning: writing the MTA-STS cache {}: {e}", path.display());
        }
    }
}

/// The policy id `domain`'s `_mta-sts` TXT record names, if it has one.
async fn record(resolver: &TokioResolver, domain: &str) -> Option<String> {
    let txt = resolver.txt_lookup(format!("_mta-sts.{domain}.").as_str()).await.ok()?;
    let records: Vec<String> = txt.iter().map(crate::deliver::dns::txt_text).collect();
    record_id(&records.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `domain`'s policy, fetched from each address of `mta-sts.DOMAIN` in turn until one serves
/// it.
pub(crate) async fn fetch(
    fetcher: &Fetcher,
    resolver: &TokioResolver,
    domain: &str,
) -> Result<Policy, String> {
    let host = format!("mta-sts.{domain}.");
    let ips = resolver.lookup_ip(host.as_str()).await.map_err(|e| format!("{host}: {e}"))?;
    let mut last = format!("{host}: no address");
    for ip in ips.iter() {
        match fetcher.fetch(domain, ip).await {
            Ok(policy) => return Ok(policy),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The MX hosts `policy` lists, of `hosts` (RFC 8461 §4.1: under `enforce`, the only ones
/// that may be used); `Err` names the hosts when it lists none of them.
pub fn allowed<T>(policy: &Policy, hosts: Vec<T>, name: impl Fn(&T) -> &str) -> Result<Vec<T>, String> {
    let (listed, refused): (Vec<T>, Vec<T>) = hosts.into_iter().partition(|h| policy.allows(name(h)));
    if listed.is_empty() {
        let names: Vec<&str> = refused.iter().map(&name).collect();
        return Err(names.join(", "));
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_are_allowed() {
        let policy = Policy {
            mode: Mode::Enforce,
            mx: vec![super::super::MxPattern::Wildcard("a.test".into())],
            max_age: 60,
        };
        let hosts = vec!["mx1.a.test", "mx.evil.test", "MX2.A.TEST."];
        assert_eq!(allowed(&policy, hosts, |h| h).unwrap(), ["mx1.a.test", "MX2.A.TEST."]);
        assert_eq!(
            allowed(&policy, vec!["mx.evil.test", "a.test"], |h| h),
            Err("mx.evil.test, a.test".to_owned())
        );
    }
}
