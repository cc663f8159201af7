//! The one route table of both listeners: which path and methods reach which endpoint, on
//! which listener, whether the request is metered and whether it needs the admin key. The
//! dispatch `match` sits next to the table, so adding an endpoint is one variant, one row and
//! one arm here, plus its own module under `endpoints/`.

use super::{admin, Role};
use crate::downstream::{self, RequestCtx};
use crate::endpoints;
use crate::error::GatewayError;
use crate::filters::auth;
use crate::state::Shared;
use pingora::protocols::http::ServerSession as Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Models,
    Health,
    Metrics,
    Ready,
    Providers,
    Clients,
    CacheStats,
    CacheClear,
    Reload,
    ConfigView,
}

#[derive(Debug)]
pub struct Route {
    pub role: Role,
    pub paths: &'static [&'static str],
    pub methods: &'static [&'static str],
    pub endpoint: Endpoint,
    /// Counted in the request metrics.
    pub metered: bool,
}

const GET: &[&str] = &["GET", "HEAD"];

const fn row(
    role: Role,
    paths: &'static [&'static str],
    methods: &'static [&'static str],
    endpoint: Endpoint,
) -> Route {
    Route {
        role,
        paths,
        methods,
        endpoint,
        metered: false,
    }
}

pub static ROUTES: &[Route] = &[
    Route {
        metered: true,
        ..row(
            Role::Api,
            &["/v1/chat/completions", "/chat/completions"],
            &["POST"],
            Endpoint::Chat,
        )
    },
    row(
        Role::Api,
        &["/v1/models", "/models"],
        &["GET"],
        Endpoint::Models,
    ),
    row(Role::Api, &["/health"], GET, Endpoint::Health),
    row(Role::Admin, &["/metrics"], GET, Endpoint::Metrics),
    row(Role::Admin, &["/health"], GET, Endpoint::Health),
    row(Role::Admin, &["/ready"], GET, Endpoint::Ready),
    row(Role::Admin, &["/admin/providers"], GET, Endpoint::Providers),
    row(Role::Admin, &["/admin/clients"], GET, Endpoint::Clients),
    row(Role::Admin, &["/admin/cache"], GET, Endpoint::CacheStats),
    row(
        Role::Admin,
        &["/admin/cache"],
        &["DELETE"],
        Endpoint::CacheClear,
    ),
    row(Role::Admin, &["/admin/reload"], &["POST"], Endpoint::Reload),
    row(Role::Admin, &["/admin/config"], GET, Endpoint::ConfigView),
];

/// Paths under the admin key.
fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Whether any listener serves `path` (the access log writes other paths as `(other)`: an
/// arbitrary path is client-controlled).
pub fn known(path: &str) -> bool {
    ROUTES.iter().any(|r| r.paths.contains(&path))
}

/// The route for this request, or the error that answers it.
fn find(role: Role, method: &str, path: &str) -> Result<&'static Route, GatewayError> {
    let mut path_known = false;
    for r in ROUTES
        .iter()
        .filter(|r| r.role == role && r.paths.contains(&path))
    {
        if r.methods.contains(&method) {
            return Ok(r);
        }
        path_known = true;
    }
    let (method, path) = (method.to_owned(), path.to_owned());
    // The admin API answers 404 for a method it does not serve, as for an unknown path: it does
    // not tell a caller which admin actions exist.
    if path_known && !is_admin_path(&path) {
        Err(GatewayError::MethodNotAllowed { method, path })
    } else {
        Err(GatewayError::NotFound { method, path })
    }
}

/// Routes one request and runs its endpoint.
pub async fn dispatch(
    shared: &Shared,
    role: Role,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let head = session.req_header();
    let path = head.uri.path();
    if role == Role::Admin && is_admin_path(path) {
        let state = shared.snapshot();
        let Some(key) = &state.config.admin_api_key else {
            return Err(GatewayError::AdminDisabled);
        };
        let presented = auth::bearer(downstream::authorization(session));
        if !presented.is_some_and(|p| auth::key_matches(key, p)) {
            return Err(GatewayError::InvalidApiKey);
        }
    }
    let route = find(role, head.method.as_str(), path)?;
    ctx.metered = route.metered;
    match route.endpoint {
        Endpoint::Chat => endpoints::chat::handle(shared, session, ctx).await,
        Endpoint::Models => endpoints::models::handle(shared, session, ctx).await,
        Endpoint::Health => {
            downstream::write_health(session, ctx).await;
            Ok(())
        }
        Endpoint::Metrics => admin::metrics(shared, session, ctx).await,
        Endpoint::Ready => admin::ready(shared, session, ctx).await,
        Endpoint::Providers => admin::providers(shared, session, ctx).await,
        Endpoint::Clients => admin::clients(shared, session, ctx).await,
        Endpoint::CacheStats => admin::cache_stats(shared, session, ctx).await,
        Endpoint::CacheClear => admin::cache_clear(shared, session, ctx).await,
        Endpoint::Reload => admin::reload(shared, session, ctx).await,
        Endpoint::ConfigView => admin::config_view(shared, session, ctx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_paths_resolve_per_listener() {
        assert_eq!(
            find(Role::Api, "POST", "/chat/completions")
                .map(|r| r.endpoint)
                .ok(),
            Some(Endpoint::Chat)
        );
        assert_eq!(
            find(Role::Api, "GET", "/v1/chat/completions")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            find(Role::Api, "GET", "/metrics").unwrap_err().status(),
            404
        );
        assert_eq!(
            find(Role::Admin, "DELETE", "/admin/cache")
                .map(|r| r.endpoint)
                .ok(),
            Some(Endpoint::CacheClear)
        );
        assert_eq!(
            find(Role::Admin, "PUT", "/admin/cache")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            find(Role::Admin, "POST", "/ready").unwrap_err().status(),
            405
        );
        assert!(known("/admin/reload") && !known("/secret/path"));
    }
}
