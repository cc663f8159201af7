//! How an attempt ends when it produced nothing for the client: the error, what routing makes
//! of it (decided by the error itself), and the attempt outcome counted in
//! `upstream_attempts_total{outcome}`.

use crate::error::{Failover, GatewayError};
use crate::state::Shared;

/// Classification of an attempt for `upstream_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ConnectError,
    Timeout,
    Status5xx,
    Status429,
    Status4xx,
    StreamError,
    /// Not tried: the target cannot serve a feature the request uses.
    Unsupported,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Status5xx => "status_5xx",
            Outcome::Status429 => "status_429",
            Outcome::Status4xx => "status_4xx",
            Outcome::StreamError => "stream_error",
            Outcome::Unsupported => "unsupported",
        }
    }

    pub fn of_status(status: u16) -> Outcome {
        match status {
            429 => Outcome::Status429,
            500..=599 => Outcome::Status5xx,
            _ => Outcome::Status4xx,
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    /// Boxed: the error path is rare and `Result<(), Failure>` stays small on the hot path.
    pub error: Box<GatewayError>,
    pub failover: Failover,
}

impl From<GatewayError> for Failure {
    fn from(error: GatewayError) -> Self {
        Failure {
            failover: error.failover(),
            error: Box::new(error),
        }
    }
}

pub fn fail<T>(error: GatewayError) -> Result<T, Failure> {
    Err(Failure::from(error))
}

pub fn record(shared: &Shared, provider: &str, outcome: Outcome) {
    shared
        .metrics
        .upstream_attempts_total
        .with_label_values(&[provider, outcome.label()])
        .inc();
}

/// Holds a provider's `inflight_requests` gauge up for the attempt's life.
pub struct InflightGuard(pub prometheus::IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
