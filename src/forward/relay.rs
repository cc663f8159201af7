//! An attempt whose answer has started: what every relay needs besides the client and the
//! upstream connection (the target, its deadlines, its routing verdict), and the few things
//! every relay does with it.

use super::failure::{fail, record, Failure, Outcome};
use crate::config::Target;
use crate::downstream::RequestCtx;
use crate::error::GatewayError;
use crate::providers::HookCx;
use crate::routing::AttemptGuard;
use crate::state::Shared;
use crate::upstream::Conn;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
pub struct Times {
    pub start: Instant,
    pub first_token_deadline: Instant,
    pub deadline: Instant,
    pub idle: Duration,
}

/// An attempt whose answer has started: what every relay needs besides the client and the
/// upstream connection.
pub struct Attempt<'a> {
    pub shared: &'a Shared,
    pub target: &'a Target,
    pub times: Times,
    pub guard: &'a mut AttemptGuard,
}

impl Attempt<'_> {
    pub fn name(&self) -> &str {
        &self.target.provider.name
    }

    pub fn record(&self, outcome: Outcome) {
        record(self.shared, self.name(), outcome);
    }

    /// Counts the attempt's outcome and fails it.
    pub fn failed<T>(&self, outcome: Outcome, error: GatewayError) -> Result<T, Failure> {
        self.record(outcome);
        fail(error)
    }

    /// The answer is established (first content or terminal event): the attempt succeeded.
    pub fn established(&mut self, ctx: &mut RequestCtx) {
        self.record(Outcome::Ok);
        let ttft = self.times.start.elapsed();
        ctx.ttft = Some(ttft);
        self.guard.success(ttft);
    }

    pub fn hooks(&self) -> HookCx<'_> {
        HookCx {
            upstream: &self.shared.upstream,
            conversations: &self.shared.conversations,
            provider: &self.target.provider,
        }
    }

    /// Returns a finished connection to the pool.
    pub async fn release(&self, conn: Conn) {
        self.shared.upstream.release(conn).await;
    }
}
