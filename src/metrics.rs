//! The gateway's Prometheus series (DESIGN §1.8), in a registry owned by the gateway rather than
//! the process-global one, so several gateways in one process (tests) never collide.
//! The request families (requests, duration, TTFT, overhead, tokens, spend) carry the `endpoint`
//! label of the route a request came in by (`server::routes`), a fixed vocabulary; all but
//! overhead also carry `variant`, the `<experiment>/<variant>` that served the request (empty
//! outside experiments: bounded, as variants come from the config).

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for LLM latencies: a cache hit is milliseconds, a long generation minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// The gateway's own time per request: microseconds to a few milliseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub time_to_first_token_seconds: HistogramVec,
    pub overhead_seconds: HistogramVec,
    pub tokens_total: IntCounterVec,
    pub usage_estimated_total: IntCounterVec,
    pub state_errors_total: IntCounterVec,
    pub upstream_attempts_total: IntCounterVec,
    pub fallbacks_total: IntCounterVec,
    pub output_validations_total: IntCounterVec,
    pub pii_detections_total: IntCounterVec,
    pub circuit_state: IntGaugeVec,
    pub inflight_requests: IntGaugeVec,
    pub cache_lookups_total: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub rate_limited_total: IntCounterVec,
    pub spend_usd_total: CounterVec,
    pub config_reloads_total: IntCounterVec,
    pub config_generation: IntGauge,
    pub feedback_total: IntCounterVec,
    /// A gauge, not a counter: scores go down as well as up (from -1 to 1).
    pub feedback_score_sum: GaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("ai_gateway")
}

fn hist(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("ai_gateway")
        .buckets(buckets.to_vec())
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(opts(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let requests_total = counter(
            "requests_total",
            "Requests answered, by endpoint, scenario, provider, HTTP status, cache result and \
             experiment variant.",
            &[
                "endpoint", "scenario", "provider", "status", "cache", "variant",
            ],
        )?;
        let tokens_total = counter(
            "tokens_total",
            "Tokens used, by kind: prompt and completion (upstream usage, else the gateway's \
             estimate), and the cached prompt and reasoning completion tokens among them.",
            &["endpoint", "scenario", "provider", "kind", "variant"],
        )?;
        let usage_estimated_total = counter(
            "usage_estimated_total",
            "Upstream answers without usage, counted from the gateway's estimate.",
            &["provider"],
        )?;
        let state_errors_total = counter(
            "state_errors_total",
            "Shared-state (Redis) commands that failed, timed out or were skipped while Redis was unreachable, by operation.",
            &["op"],
        )?;
        let upstream_attempts_total = counter(
            "upstream_attempts_total",
            "Upstream attempts by outcome.",
            &["provider", "outcome"],
        )?;
        let fallbacks_total = counter(
            "fallbacks_total",
            "Fallbacks from one provider to the next.",
            &["scenario", "from", "to"],
        )?;
        let output_validations_total = counter(
            "output_validations_total",
            "Validated (structured output) requests by result: valid at the first answer, \
             repaired (valid after an invalid answer), invalid (no valid answer).",
            &["scenario", "result"],
        )?;
        let pii_detections_total = counter(
            "pii_detections_total",
            "Personal data found in requests to targets with privacy, by kind and by what was \
             done with it (pseudonymize, mask, block). Never the values.",
            &["scenario", "kind", "action"],
        )?;
        let cache_lookups_total = counter(
            "cache_lookups_total",
            "Response cache lookups by result.",
            &["scenario", "result"],
        )?;
        let rate_limited_total = counter(
            "rate_limited_total",
            "Requests refused by a client limit.",
            &["client", "limit"],
        )?;
        let config_reloads_total = counter(
            "config_reloads_total",
            "Configuration reloads by result.",
            &["result"],
        )?;
        let histogram =
            |o: HistogramOpts, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(o, labels)?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let request_duration_seconds = histogram(
            hist(
                "request_duration_seconds",
                "Time from request to the last response byte.",
                LATENCY_BUCKETS,
            ),
            &["endpoint", "scenario", "provider", "variant"],
        )?;
        let time_to_first_token_seconds = histogram(
            hist(
                "time_to_first_token_seconds",
                "Time from request to the first content byte.",
                LATENCY_BUCKETS,
            ),
            &["endpoint", "scenario", "provider", "variant"],
        )?;
        let overhead_seconds = histogram(
            hist(
                "overhead_seconds",
                "Time spent in the gateway itself, upstream excluded.",
                OVERHEAD_BUCKETS,
            ),
            &["endpoint", "scenario"],
        )?;
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(opts(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let circuit_state = gauge_vec(
            "circuit_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            &["provider", "target"],
        )?;
        let inflight_requests = gauge_vec(
            "inflight_requests",
            "Upstream requests in flight per provider.",
            &["provider"],
        )?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(opts(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let cache_entries = gauge("cache_entries", "Entries in the response cache.")?;
        let cache_bytes = gauge("cache_bytes", "Bytes held by the response cache.")?;
        let config_generation = gauge(
            "config_generation",
            "Generation of the active configuration.",
        )?;
        let spend_usd_total = CounterVec::new(
            opts(
                "spend_usd_total",
                "Spend in USD computed from targets' cost.",
            ),
            &["endpoint", "client", "scenario", "provider", "variant"],
        )?;
        registry.register(Box::new(spend_usd_total.clone()))?;
        let feedback_total = counter(
            "feedback_total",
            "Feedback received on experiment answers (POST /v1/feedback), by scenario and variant.",
            &["scenario", "variant"],
        )?;
        let feedback_score_sum = GaugeVec::new(
            opts(
                "feedback_score_sum",
                "Sum of the feedback scores (each from -1 to 1), by scenario and variant; \
                 divided by feedback_total it is the mean score.",
            ),
            &["scenario", "variant"],
        )?;
        registry.register(Box::new(feedback_score_sum.clone()))?;
        // Series whose label values are known up front exist from the start at zero, so an
        // alert on their increase has something to watch before the first event.
        for result in ["ok", "error"] {
            config_reloads_total.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            requests_total,
            request_duration_seconds,
            time_to_first_token_seconds,
            overhead_seconds,
            tokens_total,
            usage_estimated_total,
            state_errors_total,
            upstream_attempts_total,
            fallbacks_total,
            output_validations_total,
            pii_detections_total,
            circuit_state,
            inflight_requests,
            cache_lookups_total,
            cache_entries,
            cache_bytes,
            rate_limited_total,
            spend_usd_total,
            config_reloads_total,
            config_generation,
            feedback_total,
            feedback_score_sum,
        })
    }

    /// Prometheus text exposition of every series.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families; on a bug we serve what we have.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
