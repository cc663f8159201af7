//! The one route table of both listeners: which path and methods reach which endpoint, on
//! which listener, whether the request is metered (and under which `endpoint` label) and
//! whether it needs the admin key. The dispatch `match` sits next to the table, so adding an
//! endpoint is one variant, one row and one arm here, plus its own module under `endpoints/`.
//!
//! A path is matched exactly, or it ends in `{id}`: then it matches any path with that prefix
//! and a non-empty rest, which the endpoint gets percent-decoded. The access log writes such a
//! request as the template, never with the client's id.

use super::{admin, Role};
use crate::downstream::{self, Dialect, RequestCtx};
use crate::endpoints;
use crate::error::GatewayError;
use crate::filters::auth;
use crate::protocol::Operation;
use crate::state::Shared;
use pingora::protocols::http::ServerSession as Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
    Completions,
    Messages,
    CountTokens,
    Responses,
    Response,
    Models,
    Model,
    Feedback,
    Health,
    Metrics,
    Ready,
    Providers,
    Clients,
    CacheStats,
    CacheClear,
    Reload,
    ConfigView,
    Experiments,
}

#[derive(Debug)]
pub struct Route {
    pub role: Role,
    /// Exact paths, or templates ending in [`ARG`].
    pub paths: &'static [&'static str],
    pub methods: &'static [&'static str],
    pub endpoint: Endpoint,
    /// Counted in the request metrics, under this `endpoint` label (a fixed vocabulary:
    /// `chat`, `messages`, `embeddings`, `completions`, `responses`).
    pub metered: Option<&'static str>,
}

const GET: &[&str] = &["GET", "HEAD"];

/// The placeholder a path template ends with.
const ARG: &str = "{id}";

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
        metered: None,
    }
}

/// A metered door of the API listener, counted under `label`.
const fn door(label: &'static str, paths: &'static [&'static str], endpoint: Endpoint) -> Route {
    Route {
        metered: Some(label),
        ..row(Role::Api, paths, &["POST"], endpoint)
    }
}

pub static ROUTES: &[Route] = &[
    door(
        "chat",
        &["/v1/chat/completions", "/chat/completions"],
        Endpoint::Chat,
    ),
    door(
        "embeddings",
        &["/v1/embeddings", "/embeddings"],
        Endpoint::Embeddings,
    ),
    door(
        "completions",
        &["/v1/completions", "/completions"],
        Endpoint::Completions,
    ),
    door("messages", &["/v1/messages"], Endpoint::Messages),
    door(
        "responses",
        &["/v1/responses", "/responses"],
        Endpoint::Responses,
    ),
    row(
        Role::Api,
        &["/v1/responses/{id}", "/responses/{id}"],
        &["GET", "DELETE"],
        Endpoint::Response,
    ),
    row(
        Role::Api,
        &["/v1/messages/count_tokens"],
        &["POST"],
        Endpoint::CountTokens,
    ),
    row(
        Role::Api,
        &["/v1/models", "/models"],
        &["GET"],
        Endpoint::Models,
    ),
    row(
        Role::Api,
        &["/v1/models/{id}", "/models/{id}"],
        &["GET"],
        Endpoint::Model,
    ),
    row(
        Role::Api,
        &["/v1/feedback", "/feedback"],
        &["POST"],
        Endpoint::Feedback,
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
    row(
        Role::Admin,
        &["/admin/experiments"],
        GET,
        Endpoint::Experiments,
    ),
];

/// Paths under the admin key.
fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Matches `path` against one row path: `Some(rest)` where the rest is what the template's
/// [`ARG`] stands for (empty for an exact path).
fn path_match<'p>(pattern: &str, path: &'p str) -> Option<&'p str> {
    match pattern.strip_suffix(ARG) {
        Some(prefix) => path.strip_prefix(prefix).filter(|rest| !rest.is_empty()),
        None => (pattern == path).then_some(""),
    }
}

/// The row path (or template) of `route` that `path` matches, and the rest for its [`ARG`].
fn pattern_of<'p>(route: &Route, path: &'p str) -> Option<(&'static str, &'p str)> {
    route
        .paths
        .iter()
        .find_map(|p| path_match(p, path).map(|rest| (*p, rest)))
}

/// How the access log writes `path`: as is for a fixed route, as its template for a route
/// with an argument, and `(other)` for anything else (an arbitrary path is client-controlled).
pub fn logged_path(path: &str) -> &str {
    match ROUTES.iter().find_map(|r| pattern_of(r, path)) {
        Some((pattern, _)) if pattern.ends_with(ARG) => pattern,
        Some(_) => path,
        None => "(other)",
    }
}

/// The route for this request and the raw (still percent-encoded) argument of a template
/// path, or the error that answers it.
fn find<'p>(
    role: Role,
    method: &str,
    path: &'p str,
) -> Result<(&'static Route, &'p str), GatewayError> {
    let mut path_known = false;
    for r in ROUTES.iter().filter(|r| r.role == role) {
        let Some((_, arg)) = pattern_of(r, path) else {
            continue;
        };
        if r.methods.contains(&method) {
            return Ok((r, arg));
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

/// A template path's argument, percent-decoded: ids may contain `/` or spaces, which clients
/// (the openai SDKs among them) send encoded.
fn decode(arg: &str) -> String {
    percent_encoding::percent_decode_str(arg)
        .decode_utf8_lossy()
        .into_owned()
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
    let (route, arg) = find(role, head.method.as_str(), path)?;
    // Owned: the argument borrows the request head, and the endpoints take the session.
    let arg = decode(arg);
    ctx.endpoint = route.metered;
    match route.endpoint {
        Endpoint::Messages | Endpoint::CountTokens => ctx.dialect = Dialect::Anthropic,
        Endpoint::Responses => ctx.dialect = Dialect::Responses,
        _ => {}
    }
    match route.endpoint {
        Endpoint::Chat => endpoints::chat::handle(shared, session, ctx).await,
        Endpoint::Embeddings => {
            endpoints::chat::handle_op(shared, session, ctx, Operation::Embeddings).await
        }
        Endpoint::Completions => {
            endpoints::chat::handle_op(shared, session, ctx, Operation::Completions).await
        }
        Endpoint::Messages => endpoints::messages::handle(shared, session, ctx).await,
        Endpoint::CountTokens => endpoints::messages::count_tokens(shared, session, ctx).await,
        Endpoint::Responses => endpoints::responses::handle(shared, session, ctx).await,
        Endpoint::Response => endpoints::responses::stored(shared, session, ctx, &arg).await,
        Endpoint::Models => endpoints::models::handle(shared, session, ctx).await,
        Endpoint::Model => endpoints::models::retrieve(shared, session, ctx, &arg).await,
        Endpoint::Feedback => endpoints::feedback::handle(shared, session, ctx).await,
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
        Endpoint::Experiments => admin::experiments(shared, session, ctx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_paths_resolve_per_listener() {
        assert_eq!(
            find(Role::Api, "POST", "/chat/completions")
                .map(|(r, _)| r.endpoint)
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
                .map(|(r, _)| r.endpoint)
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
        for (path, endpoint, label) in [
            ("/v1/embeddings", Endpoint::Embeddings, "embeddings"),
            ("/embeddings", Endpoint::Embeddings, "embeddings"),
            ("/v1/completions", Endpoint::Completions, "completions"),
            ("/v1/chat/completions", Endpoint::Chat, "chat"),
            ("/v1/messages", Endpoint::Messages, "messages"),
        ] {
            let (r, _) = find(Role::Api, "POST", path).unwrap();
            assert_eq!((r.endpoint, r.metered), (endpoint, Some(label)), "{path}");
        }
        assert_eq!(
            find(Role::Api, "POST", "/v1/models")
                .map(|(r, _)| r.metered)
                .ok(),
            None,
            "a GET-only path answers 405"
        );
        assert_eq!(logged_path("/admin/reload"), "/admin/reload");
        assert_eq!(logged_path("/secret/path"), "(other)");
    }

    #[test]
    fn a_template_path_takes_the_rest_as_its_argument() {
        let found = |path| {
            find(Role::Api, "GET", path)
                .map(|(r, arg)| (r.endpoint, arg))
                .ok()
        };
        assert_eq!(found("/v1/models"), Some((Endpoint::Models, "")));
        assert_eq!(
            found("/v1/models/org/m%20v2"),
            Some((Endpoint::Model, "org/m%20v2"))
        );
        assert_eq!(found("/models/gpt-4o"), Some((Endpoint::Model, "gpt-4o")));
        assert_eq!(decode("org%2Fm%20v2"), "org/m v2");
        // No id: no route.
        assert_eq!(
            find(Role::Api, "GET", "/v1/models/").unwrap_err().status(),
            404
        );
        assert_eq!(
            find(Role::Api, "POST", "/v1/models/x")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            find(Role::Admin, "GET", "/v1/models/x")
                .unwrap_err()
                .status(),
            404
        );
        // The client's id never reaches the log.
        assert_eq!(logged_path("/v1/models/secret%20id"), "/v1/models/{id}");
        assert_eq!(logged_path("/models/a/b"), "/models/{id}");
        assert_eq!(logged_path("/v1/models"), "/v1/models");
        assert_eq!(logged_path("/v1/models/"), "(other)");
    }
}
