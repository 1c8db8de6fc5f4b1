//! `--metrics-listen`, the same for `send`, `bench` and `serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use mailvolley::metrics::{self, Metrics};
use mailvolley::rt::http::HttpServer;

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this address while the
    /// command runs (serve has them on its HTTP API's listener too). No key is asked for:
    /// bind it where only your monitoring reaches.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts the listener, if one was asked for, with what `make` gives.
    pub fn start(&self, make: impl FnOnce() -> Arc<Metrics>) -> anyhow::Result<Option<HttpServer>> {
        let Some(addr) = self.metrics_listen else { return Ok(None) };
        let server = metrics::http::start(addr, make()).context("starting the metrics listener")?;
        Ok(Some(server))
    }
}
