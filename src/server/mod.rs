//! The pingora side: both listeners are pingora HTTP apps (`HttpServerApp`) backed by one
//! `Gateway`. Each request is read by pingora, dispatched through the one route table
//! (`routes`) to its endpoint (the upstream call is the gateway's own too, see `forward`), then
//! its metrics and access-log line are recorded and the connection goes back to pingora for
//! keep-alive. The request context keeps the request in the in-flight count that the SIGTERM
//! drain waits on.

mod admin;
pub mod routes;

use crate::downstream::{self, CacheState, RequestCtx};
use crate::state::Shared;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession as Session;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `listen`: the OpenAI-compatible API.
    Api,
    /// `admin.listen`: metrics, health, readiness and the admin API.
    Admin,
}

pub struct Gateway {
    pub role: Role,
    pub shared: Arc<Shared>,
}

/// Waits for the service's shutdown signal (an idle keep-alive connection must not hold the
/// drain open).
async fn shutting_down(shutdown: &ShutdownWatch) {
    let mut watch = shutdown.clone();
    if watch.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Gateway requests are answered by the gateway's own handlers, so the listeners are plain
/// pingora HTTP apps: pingora's proxy layer (phases, modules, its cache and upstream pool)
/// would cost about a microsecond a request and never be used.
#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: Session,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            // Biased: a request already buffered is served even when shutdown has begun.
            biased;
            read = session.read_request() => read,
            _ = shutting_down(shutdown) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if e.etype() == &pingora::ErrorType::InvalidHTTPHeader {
                    downstream::write_malformed(&mut session).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = self.new_ctx();
        self.serve(&mut session, &mut ctx).await;
        if self.shared.access_log.enabled() {
            self.access_log(&session, &ctx);
        }
        if let Some(endpoint) = ctx.endpoint {
            self.record_metrics(&ctx, endpoint);
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok().flatten();
        // The request leaves the in-flight count only once its answer is fully written.
        drop(ctx);
        reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}

impl Gateway {
    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.inflight = Some(self.shared.lifecycle.enter());
        ctx.drain = Some(self.shared.lifecycle.deadline_watch());
        ctx
    }

    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx.request_id = downstream::request_id(session);
        let result = routes::dispatch(&self.shared, self.role, session, ctx).await;
        if let Err(err) = result {
            if ctx.status == 0 && downstream::write_error(session, ctx, &err).await.is_err() {
                ctx.status = 499;
            }
        }
    }

    fn access_log(&self, session: &Session, ctx: &RequestCtx) {
        let req = session.req_header();
        let path = req.uri.path();
        // Probes and scrapes would drown the requests that matter.
        if matches!(path, "/health" | "/ready" | "/metrics") {
            return;
        }
        let elapsed = ctx.started.elapsed();
        let entry = crate::access_log::Entry {
            request_id: &ctx.request_id,
            method: req.method.as_str(),
            // Never the raw path: an arbitrary path (or a route's id) is client-controlled.
            path: routes::logged_path(path),
            client: ctx.client.as_deref(),
            scenario: ctx.scenario.as_deref(),
            variant: ctx.variant.as_deref(),
            pii: ctx.pii.as_deref(),
            provider: ctx.provider.as_deref(),
            stream: ctx.stream,
            attempts: ctx.attempts,
            status: ctx.status,
            cache: ctx.cache.as_str(),
            error: ctx.error.as_deref(),
            ttft: ctx.ttft,
            duration: elapsed,
            overhead: elapsed.saturating_sub(ctx.upstream_wait),
            prompt_tokens: ctx.prompt_tokens,
            completion_tokens: ctx.completion_tokens,
            dropped: ctx.dropped,
        };
        let format = self.shared.snapshot().config.log_format;
        self.shared.access_log.write(&entry, format);
    }

    fn record_metrics(&self, ctx: &RequestCtx, endpoint: &str) {
        let m = &self.shared.metrics;
        let scenario = ctx.scenario.as_deref().unwrap_or("-");
        let provider = ctx.provider.as_deref().unwrap_or("-");
        let variant = ctx.variant.as_deref().unwrap_or("");
        let status = ctx.status.to_string();
        m.requests_total
            .with_label_values(&[
                endpoint,
                scenario,
                provider,
                status.as_str(),
                ctx.cache.as_str(),
                variant,
            ])
            .inc();
        let elapsed = ctx.started.elapsed();
        m.request_duration_seconds
            .with_label_values(&[endpoint, scenario, provider, variant])
            .observe(elapsed.as_secs_f64());
        m.overhead_seconds
            .with_label_values(&[endpoint, scenario])
            .observe(elapsed.saturating_sub(ctx.upstream_wait).as_secs_f64());
        if let Some(ttft) = ctx.ttft {
            m.time_to_first_token_seconds
                .with_label_values(&[endpoint, scenario, provider, variant])
                .observe(ttft.as_secs_f64());
        }
        if let Some(n) = ctx.prompt_tokens {
            m.tokens_total
                .with_label_values(&[endpoint, scenario, provider, "prompt", variant])
                .inc_by(n);
        }
        if let Some(n) = ctx.completion_tokens {
            m.tokens_total
                .with_label_values(&[endpoint, scenario, provider, "completion", variant])
                .inc_by(n);
        }
        // Parts of the two above, counted again on their own (only when there are some).
        for (kind, n) in [
            ("cached", ctx.cached_tokens),
            ("reasoning", ctx.reasoning_tokens),
        ] {
            if let Some(n) = n.filter(|n| *n > 0) {
                m.tokens_total
                    .with_label_values(&[endpoint, scenario, provider, kind, variant])
                    .inc_by(n);
            }
        }
        if ctx.usage_estimated {
            m.usage_estimated_total.with_label_values(&[provider]).inc();
        }
        // Cache hits cost nothing; every other answer is priced from the target's `cost`.
        let spent = ctx.spent.unwrap_or_else(|| {
            if ctx.cache == CacheState::Hit {
                0.0
            } else {
                crate::limits::usd_cached(
                    ctx.cost,
                    ctx.prompt_tokens.unwrap_or(0),
                    ctx.cached_tokens.unwrap_or(0),
                    ctx.completion_tokens.unwrap_or(0),
                )
            }
        });
        if spent > 0.0 {
            m.spend_usd_total
                .with_label_values(&[
                    endpoint,
                    ctx.client.as_deref().unwrap_or("-"),
                    scenario,
                    provider,
                    variant,
                ])
                .inc_by(spent);
        }
        if let Some(v) = &ctx.variant {
            self.shared.experiments.record(
                v,
                &crate::experiments::Outcome {
                    status: ctx.status,
                    duration: elapsed,
                    ttft: ctx.ttft,
                    prompt_tokens: ctx.prompt_tokens.unwrap_or(0),
                    completion_tokens: ctx.completion_tokens.unwrap_or(0),
                    spend_usd: spent,
                },
            );
        }
    }
}
