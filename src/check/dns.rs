//! The real [`Lookup`]: hickory on a current-thread tokio runtime, blocking per question.
//! `volley check` asks a few dozen questions once, at the command line: no thread of its own.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use super::Lookup;
use crate::deliver::dane::{Dane, HostDane};
use crate::deliver::dns::{DnsConfig, build, describe, no_records, no_such_domain, txt_text};
use crate::deliver::mta_sts::Policy;
use crate::deliver::mta_sts::fetch::Fetcher;
use crate::deliver::mta_sts::lookup;

pub struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
    /// How MTA-STS policies are fetched (`DnsConfig::mta_sts`).
    fetcher: Option<Fetcher>,
    /// The validating resolver (`DnsConfig::dane`), once its probe passed; `Err`: why DANE
    /// cannot be checked.
    dane: Result<Dane, String>,
}

impl Dns {
    pub fn new(config: &DnsConfig) -> std::io::Result<Dns> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // hickory's resolver must be built inside the runtime that drives it.
        let resolver = runtime.block_on(async { build(config) })?;
        let fetcher = config.mta_sts.as_ref().map(|sts| sts.fetcher.clone());
        let dane = match &config.dane {
            Some(dane) => {
                let dane = runtime.block_on(async { Dane::with(config, dane) })?;
                // Probed once, here: every host's row would say the same.
                runtime.block_on(dane.probe()).map(|()| dane)
            }
            None => Err("DANE is off".to_owned()),
        };
        Ok(Dns { runtime, resolver, fetcher, dane })
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// An answer's records, or none for NXDOMAIN and NODATA.
fn answer<T>(
    result: Result<hickory_resolver::lookup::Lookup, hickory_resolver::ResolveError>,
    pick: impl Fn(&RData) -> Option<T>,
) -> Result<Vec<T>, String> {
    match result {
        Ok(lookup) => Ok(lookup.record_iter().filter_map(|r| pick(r.data())).collect()),
        Err(e) if no_records(&e) || no_such_domain(&e) => Ok(Vec::new()),
        Err(e) => Err(describe(&e)),
    }
}

impl Lookup for Dns {
    fn txt(&mut self, name: &str) -> Result<Vec<String>, String> {
        let lookup = self.runtime.block_on(self.resolver.txt_lookup(fqdn(name))).map(Into::into);
        answer(lookup, |data| match data {
            RData::TXT(txt) => Some(txt_text(txt)),
            _ => None,
        })
    }

    fn ips(&mut self, name: &str) -> Result<Vec<IpAddr>, String> {
        let lookup =
            self.runtime.block_on(self.resolver.lookup_ip(fqdn(name))).map(|l| l.as_lookup().clone());
        answer(lookup, |data| match data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
    }

    fn mx(&mut self, name: &str) -> Result<Vec<String>, String> {
        let lookup = self.runtime.block_on(self.resolver.mx_lookup(fqdn(name))).map(Into::into);
        answer(lookup, |data| match data {
            RData::MX(mx) => Some(mx.exchange().to_ascii().trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
    }

    fn mta_sts_policy(&mut self, domain: &str) -> Result<Policy, String> {
        let Some(fetcher) = &self.fetcher else { return Err("MTA-STS is not set up".into()) };
        self.runtime.block_on(lookup::fetch(fetcher, &self.resolver, domain))
    }

    fn dane(&mut self, host: &str) -> Result<HostDane, String> {
        let dane = self.dane.as_ref().map_err(Clone::clone)?;
        Ok(self.runtime.block_on(dane.host(host)))
    }

    fn ptr(&mut self, ip: IpAddr) -> Result<Vec<String>, String> {
        let lookup = self.runtime.block_on(self.resolver.reverse_lookup(ip)).map(Into::into);
        answer(lookup, |data| match data {
            RData::PTR(name) => Some(name.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
    }
}
