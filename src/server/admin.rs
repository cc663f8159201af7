//! The admin listener: `/metrics`, `/health`, `/ready` (open) and `/admin/*` (admin key).

use crate::error::GatewayError;
use crate::exchange::{self, RequestCtx};
use crate::filters::auth;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;
use std::sync::atomic::Ordering;

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let method = session.req_header().method.as_str().to_owned();
    let path = session.req_header().uri.path().to_owned();
    let get = method == "GET" || method == "HEAD";
    match path.as_str() {
        "/metrics" if get => {
            let (entries, bytes) = shared.cache.size();
            shared.metrics.cache_entries.set(entries as i64);
            shared.metrics.cache_bytes.set(bytes as i64);
            let body = Bytes::from(shared.metrics.render());
            let _ =
                exchange::write_full(session, ctx, 200, prometheus::TEXT_FORMAT, body, &[]).await;
            Ok(())
        }
        "/health" if get => {
            exchange::write_health(session, ctx).await;
            Ok(())
        }
        "/ready" if get => {
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
                (
                    200,
                    json!({"status": "ready", "config_generation": state.generation}),
                )
            } else {
                (
                    503,
                    json!({"status": "not_ready", "scenarios_without_usable_target": missing}),
                )
            };
            let _ = exchange::write_json(session, ctx, status, Bytes::from(body.to_string())).await;
            Ok(())
        }
        "/metrics" | "/health" | "/ready" => Err(GatewayError::MethodNotAllowed { method, path }),
        p if p == "/admin" || p.starts_with("/admin/") => {
            let state = shared.snapshot();
            let Some(key) = &state.config.admin_api_key else {
                return Err(GatewayError::AdminDisabled);
            };
            let presented = auth::bearer(super::authorization(session));
            if !presented.is_some_and(|p| auth::key_matches(key, p)) {
                return Err(GatewayError::InvalidApiKey);
            }
            match (path.as_str(), get) {
                ("/admin/providers", true) => {
                    let body = Bytes::from(shared.router.snapshot().to_string());
                    let _ = exchange::write_json(session, ctx, 200, body).await;
                    Ok(())
                }
                ("/admin/clients", true) => {
                    let clients = state.config.clients.as_deref().unwrap_or_default();
                    let body = Bytes::from(shared.limits.snapshot(clients).to_string());
                    let _ = exchange::write_json(session, ctx, 200, body).await;
                    Ok(())
                }
                ("/admin/cache", true) => {
                    let (entries, bytes) = shared.cache.size();
                    let lookups = shared.cache.lookups.load(Ordering::Relaxed);
                    let hits = shared.cache.hits.load(Ordering::Relaxed);
                    let body = json!({
                        "entries": entries,
                        "bytes": bytes,
                        "lookups": lookups,
                        "hits": hits,
                        "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
                    });
                    let _ = exchange::write_json(session, ctx, 200, Bytes::from(body.to_string()))
                        .await;
                    Ok(())
                }
                ("/admin/cache", false) if method == "DELETE" => {
                    let cleared = shared.cache.clear();
                    let body = json!({"cleared": cleared}).to_string();
                    let _ = exchange::write_json(session, ctx, 200, Bytes::from(body)).await;
                    Ok(())
                }
                ("/admin/reload", false) if method == "POST" => {
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
                    let _ =
                        exchange::write_json(session, ctx, status, Bytes::from(body.to_string()))
                            .await;
                    Ok(())
                }
                ("/admin/config", true) => {
                    let mut body = crate::config::view::redacted(&state.config);
                    body["config_generation"] = json!(state.generation);
                    body["loaded_at"] = json!(state.loaded_at);
                    let _ = exchange::write_json(session, ctx, 200, Bytes::from(body.to_string()))
                        .await;
                    Ok(())
                }
                _ => Err(GatewayError::NotFound { method, path }),
            }
        }
        _ => Err(GatewayError::NotFound { method, path }),
    }
}
