//! What a store-and-forward sender (`send`, `serve`) is told about delivery: where mail goes,
//! how fast, how it is signed, when deferred mail is tried again, how failures are named.
//! One struct for both, so a flag means the same in each.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::bounce::Classifier;
use super::dns::{DnsConfig, Resolver};
use super::route::Routes;
use super::rules_file::RulesError;
use super::{dkim, shaping};
use crate::engine::{self, EngineConfig, Schedule};

/// Where the mail goes.
#[derive(Debug, Clone)]
pub enum Routing {
    /// Each recipient domain's MX hosts, on `port`.
    Mx { dns: DnsConfig, port: u16 },
    /// One smarthost.
    Relay { name: String, addrs: Vec<SocketAddr> },
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Session, TLS and engine settings; the store-and-forward ones are added by
    /// [`super::engine_config`].
    pub engine: EngineConfig,
    pub routing: Routing,
    /// Connections per destination (an MX host set, or the relay), across cores, unless a
    /// shaping rule says otherwise; likewise `destination_rate`, `connection_rate` and the
    /// engine's messages per connection.
    pub connections: usize,
    pub destination_rate: Option<engine::Rate>,
    pub connection_rate: Option<engine::Rate>,
    /// Messages per unit of time over everything.
    pub rate: Option<engine::Rate>,
    /// Shaping rules files, tried before the shipped rules (left out when `shaping_defaults`
    /// is false).
    pub shaping: Vec<PathBuf>,
    pub shaping_defaults: bool,
    /// Bounce classification rules tried before the shipped ones.
    pub bounce_rules: Vec<PathBuf>,
    pub schedule: Schedule,
    /// Keys to DKIM-sign messages with (none: unsigned).
    pub dkim: Vec<dkim::KeySpec>,
}

/// The rules files and what they are read with: what reading them again needs (serve's
/// SIGHUP), apart from the rest of the configuration.
#[derive(Debug, Clone)]
pub struct RulesFiles {
    shaping: Vec<PathBuf>,
    shaping_defaults: bool,
    defaults: shaping::Defaults,
    bounce_rules: Vec<PathBuf>,
}

impl RulesFiles {
    /// The shaping rules, with the command line's limits as their defaults.
    pub fn shaping(&self) -> Result<shaping::ShapingRules, RulesError> {
        shaping::ShapingRules::load(&self.shaping, self.shaping_defaults, self.defaults.clone())
    }

    /// The bounce classifier: the user's rules, then the shipped ones.
    pub fn classifier(&self) -> Result<Classifier, RulesError> {
        Classifier::load(&self.bounce_rules)
    }
}

impl DeliveryConfig {
    /// The rules files, to read (again).
    pub fn rules_files(&self) -> RulesFiles {
        let defaults = shaping::Defaults {
            connections: self.connections,
            limits: engine::Limits {
                messages_per_connection: Some(self.engine.client.max_messages),
                rate: self.destination_rate,
                connection_rate: self.connection_rate,
            },
        };
        RulesFiles {
            shaping: self.shaping.clone(),
            shaping_defaults: self.shaping_defaults,
            defaults,
            bounce_rules: self.bounce_rules.clone(),
        }
    }

    /// The shaping rules, with the command line's limits as their defaults.
    pub fn shaping(&self) -> Result<shaping::ShapingRules, RulesError> {
        self.rules_files().shaping()
    }

    /// Where the mail goes, resolving MX hosts on the DNS thread (started here).
    pub fn routes(&self, shaping: shaping::ShapingRules) -> std::io::Result<Routes> {
        Ok(match &self.routing {
            Routing::Mx { dns, port } => Routes::mx(Resolver::start(dns.clone())?, *port, shaping),
            Routing::Relay { name, addrs } => Routes::relay(name, addrs.clone(), shaping),
        })
    }

    /// The bounce classifier: the user's rules, then the shipped ones.
    pub fn classifier(&self) -> Result<Classifier, RulesError> {
        self.rules_files().classifier()
    }

    /// Keeps MTA-STS policies in `path` unless a file was given (serve keeps them in its
    /// spool's directory, so they outlive a restart).
    pub fn keep_mta_sts_in(&mut self, path: PathBuf) {
        if let Routing::Mx { dns: DnsConfig { mta_sts: Some(sts), .. }, .. } = &mut self.routing {
            sts.cache_file.get_or_insert(path);
        }
    }
}
