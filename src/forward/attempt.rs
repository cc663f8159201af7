//! One attempt on one target: open the provider's call within the target's deadlines, turn an
//! error answer into the provider's gateway error (or let the provider recover and ask again),
//! and hand a good answer to the relay its shape needs. An `Err` means nothing was written
//! downstream yet, so routing may try another target.

use super::failure::{fail, record, Failure, InflightGuard, Outcome};
use super::relay::{Attempt, Times};
use super::wait::client_gone;
use super::{passthrough, translated, Job};
use crate::config::Target;
use crate::downstream::RequestCtx;
use crate::error::{sanitize, GatewayError};
use crate::providers::{Deadlines, Dispatch, HookCx, Provider, UpstreamCall};
use crate::routing::AttemptGuard;
use crate::state::Shared;
use crate::upstream::{self, OpenError};
use pingora::protocols::http::ServerSession as Session;
use std::time::{Duration, Instant};

/// The largest upstream error body read to extract a message.
const MAX_ERROR_BODY: usize = 64 << 10;

fn open_error(
    name: &str,
    e: OpenError,
    times: &Times,
    connect: Duration,
) -> (Outcome, GatewayError) {
    match e {
        OpenError::Connect(e) => (
            Outcome::ConnectError,
            GatewayError::UpstreamError(format!("provider {name}: {}", sanitize(&e))),
        ),
        OpenError::Io(e) => (
            Outcome::ConnectError,
            GatewayError::UpstreamError(format!(
                "provider {name}: connection failed before an answer: {}",
                sanitize(&e)
            )),
        ),
        OpenError::ConnectTimeout => (
            Outcome::Timeout,
            GatewayError::UpstreamTimeout(format!(
                "provider {name}: no connection within connect timeout {connect:?}"
            )),
        ),
        OpenError::Timeout => (
            Outcome::Timeout,
            GatewayError::UpstreamTimeout(format!(
                "provider {name} sent no answer within first_token timeout {:?}",
                times.first_token_deadline - times.start
            )),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
    target: &Target,
    provider: &Dispatch<'_>,
    mut call: UpstreamCall,
    guard: &mut AttemptGuard,
) -> Result<(), Failure> {
    let name = &target.provider.name;
    let t = target.timeouts;
    let start = Instant::now();
    let deadline = start + t.total;
    let times = Times {
        start,
        first_token_deadline: (start + t.first_token).min(deadline),
        deadline,
        idle: t.idle,
    };
    let deadlines = Deadlines {
        total: deadline,
        head: times.first_token_deadline,
    };
    ctx.provider = Some(name.clone());
    ctx.cost = target.cost;
    let gauge = shared.metrics.inflight_requests.with_label_values(&[name]);
    gauge.inc();
    let _inflight = InflightGuard(gauge);

    loop {
        ctx.attempts += 1;
        let t0 = Instant::now();
        let opened = tokio::select! {
            r = provider.open(&shared.upstream, target, &call, &ctx.request_id, deadlines) => r,
            // Leaving before the answer starts cancels the upstream call (dropping it closes
            // the connection); it says nothing about the target's health.
            _ = client_gone(session) => {
                ctx.status = 499;
                return Ok(());
            }
            _ = crate::lifecycle::deadline_passed(&mut ctx.drain) => return fail(GatewayError::ShuttingDown),
        };
        ctx.upstream_wait += t0.elapsed();
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                let (outcome, error) = open_error(name, e, &times, t.connect);
                record(shared, name, outcome);
                return fail(error);
            }
        };
        let Some(status) = conn.status() else {
            record(shared, name, Outcome::StreamError);
            return fail(GatewayError::UpstreamError(format!(
                "provider {name}: no response header"
            )));
        };
        let retry_after = conn
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let is_sse = conn
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream"));

        if !(200..300).contains(&status) {
            let body = upstream::read_all(&mut conn, deadline, t.idle, deadline, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            shared.upstream.release(conn).await;
            record(shared, name, Outcome::of_status(status));
            let err = provider.map_error(status, &body, retry_after);
            let hooks = HookCx {
                upstream: &shared.upstream,
                conversations: &shared.conversations,
                provider: &target.provider,
            };
            if provider.recover(&hooks, &mut call, &err).await {
                continue;
            }
            return fail(err);
        }

        let mut a = Attempt {
            shared,
            target,
            times,
            guard: &mut *guard,
        };
        if let Some(decoder) = call.decoder.take() {
            // A call that asked for a whole answer may still get a stream: both are decoded.
            let whole = !is_sse && !call.stream;
            if !is_sse && !whole {
                let ct = conn
                    .header("content-type")
                    .unwrap_or("no content type")
                    .to_owned();
                a.release(conn).await;
                return a.failed(
                    Outcome::StreamError,
                    GatewayError::UpstreamError(format!(
                        "provider {name} answered {ct} instead of an event stream"
                    )),
                );
            }
            let client = translated::client_view(job, ctx.dialect);
            // Boxed: the translated relay's future is the largest of the relays, and inline it
            // would be copied with every attempt, translated or not.
            return Box::pin(translated::relay(
                &mut a, session, ctx, conn, decoder, client, whole,
            ))
            .await;
        }
        return if call.stream && is_sse {
            passthrough::stream(&mut a, session, ctx, conn, !job.req.include_usage).await
        } else {
            passthrough::json(&mut a, session, ctx, conn).await
        };
    }
}
