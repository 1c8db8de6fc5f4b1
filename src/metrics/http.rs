//! Metrics over HTTP: the `GET /metrics` route (serve adds it to its API listener) and a
//! listener of its own for `send` and `bench` (`--metrics-listen`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;
use crate::rt::http::HttpServer;

/// What Prometheus asks for and `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response() }
        }),
    )
}

/// Serves `GET /metrics` on `listen`, on a thread of its own, until the server is dropped.
pub fn start(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<HttpServer> {
    HttpServer::start(listen, router(metrics), "metrics")
}
