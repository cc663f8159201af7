//! The admin listener's endpoints: `/metrics`, `/ready` (open) and `/admin/*` (the admin key is
//! checked by the route table before any of these run).

use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::{json, Value};

type Answer = Result<(), GatewayError>;

async fn json_answer(session: &mut Session, ctx: &mut RequestCtx, status: u16, v: Value) -> Answer {
    // A failed write means the client left; there is nobody to tell.
    let _ = downstream::write_json(session, ctx, status, Bytes::from(v.to_string())).await;
    Ok(())
}

pub async fn metrics(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let stats = shared.cache.stats().await;
    shared.metrics.cache_entries.set(stats.entries as i64);
    shared.metrics.cache_bytes.set(stats.bytes as i64);
    let body = Bytes::from(shared.metrics.render());
    let _ = downstream::write_full(session, ctx, 200, prometheus::TEXT_FORMAT, body, &[]).await;
    Ok(())
}

pub async fn ready(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let state = shared.snapshot();
    let missing: Vec<&str> = state
        .config
        .scenarios
        .values()
        .filter(|s| !shared.router.has_usable_target(s))
        .map(|s| s.name.as_str())
        .collect();
    let (status, body) = if shared.lifecycle.draining() {
        (503, json!({"status": "draining"}))
    } else if missing.is_empty() {
        // A Redis fault does not make the replica unready: it still serves (per
        // state.on_error), and taking every replica out of service would be worse.
        let shared_state = match &shared.remote {
            None => "local",
            Some(r) if r.degraded() => "degraded",
            Some(_) => "ok",
        };
        (
            200,
            json!({"status": "ready", "config_generation": state.generation, "state": shared_state}),
        )
    } else {
        (
            503,
            json!({"status": "not_ready", "scenarios_without_usable_target": missing}),
        )
    };
    json_answer(session, ctx, status, body).await
}

pub async fn providers(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    json_answer(session, ctx, 200, shared.router.snapshot()).await
}

pub async fn clients(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let state = shared.snapshot();
    let clients = state.config.clients.as_deref().unwrap_or_default();
    let body = shared.limits.snapshot(clients).await;
    json_answer(session, ctx, 200, body).await
}

pub async fn cache_stats(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let stats = shared.cache.stats().await;
    let body = json!({
        "entries": stats.entries,
        "bytes": stats.bytes,
        "lookups": stats.lookups,
        "hits": stats.hits,
        "hit_ratio": if stats.lookups == 0 { 0.0 } else { stats.hits as f64 / stats.lookups as f64 },
    });
    json_answer(session, ctx, 200, body).await
}

pub async fn cache_clear(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let cleared = shared.cache.clear().await;
    json_answer(session, ctx, 200, json!({"cleared": cleared})).await
}

pub async fn reload(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let (status, body) = match shared.reload("admin API") {
        Ok(r) => (
            200,
            json!({"status": "ok", "config_generation": r.generation, "restart_required": r.restart_required}),
        ),
        Err(e) => (
            400,
            json!({
                "error": {"message": "the config file is invalid; the running config is unchanged", "type": "invalid_request_error", "param": null, "code": "invalid_config"},
                "errors": e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            }),
        ),
    };
    json_answer(session, ctx, status, body).await
}

pub async fn config_view(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let state = shared.snapshot();
    let mut body = crate::config::view::redacted(&state.config);
    body["config_generation"] = json!(state.generation);
    body["loaded_at"] = json!(state.loaded_at);
    json_answer(session, ctx, 200, body).await
}

pub async fn experiments(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Answer {
    let state = shared.snapshot();
    let body = shared.experiments.snapshot(&state.config);
    json_answer(session, ctx, 200, body).await
}
