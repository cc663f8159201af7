//! `POST /v1/feedback`: a client's score (from -1 to 1) for the answer of one of its experiment
//! requests, named by the `x-request-id` the gateway returned. Authenticated as chat; another
//! client's request id, an unknown one or one already scored is a 404. Counted in
//! `ai_gateway_feedback_total` / `ai_gateway_feedback_score_sum` and this replica's
//! `/admin/experiments` figures. The optional comment is checked, never kept nor logged.

use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::experiments::{self, Feedback, MAX_FEEDBACK_BODY};
use crate::filters::auth;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    let client = auth::authenticate(config, downstream::authorization(session))?;
    ctx.client = client.map(|c| c.name.clone());
    let body = downstream::read_body(session, MAX_FEEDBACK_BODY.min(config.max_body)).await?;
    let feedback = Feedback::parse(&body)?;
    let client = client.map(|c| c.name.as_str());
    let Some(record) = experiments::take(&shared.feedback, client, &feedback.request_id).await
    else {
        return Err(GatewayError::Mapped {
            status: 404,
            message: "no experiment request of this client has that request_id (unknown, \
                      older than 24 h, not an experiment request, or already scored)"
                .into(),
            error_type: "invalid_request_error".into(),
            code: "request_not_found".into(),
            param: Some("request_id".into()),
            should_retry: Some(false),
            retry_after: None,
        });
    };
    let m = &shared.metrics;
    let labels = [record.scenario.as_str(), record.variant.as_str()];
    m.feedback_total.with_label_values(&labels).inc();
    m.feedback_score_sum
        .with_label_values(&labels)
        .add(feedback.score);
    shared.experiments.feedback(&record.variant, feedback.score);
    let body = json!({
        "ok": true,
        "request_id": feedback.request_id,
        "scenario": record.scenario,
        "variant": record.variant,
    });
    ctx.scenario = Some(record.scenario);
    ctx.variant = Some(record.variant);
    let _ = downstream::write_json(session, ctx, 200, Bytes::from(body.to_string())).await;
    Ok(())
}
