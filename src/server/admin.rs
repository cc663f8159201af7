//! The admin listener: `/metrics`, `/health`, `/ready` (open) and `/admin/*` (admin key).

use crate::error::GatewayError;
use crate::exchange::{self, RequestCtx};
use crate::filters::auth;
use crate::state::Shared;
use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::json;

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
            let (status, body) = if missing.is_empty() {
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
                // config, reload and cache arrive with their issues.
                _ => Err(GatewayError::NotFound { method, path }),
            }
        }
        _ => Err(GatewayError::NotFound { method, path }),
    }
}
