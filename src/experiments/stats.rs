//! This replica's figures per experiment variant, for `GET /admin/experiments`: exact counts
//! (requests, errors, tokens, spend, feedback count, score sum and sum of squares) and the last
//! [`SAMPLES`] latencies and TTFTs for percentiles. Kept by `<experiment>/<variant>`, so a reload
//! keeps the figures of every variant whose experiment and variant names did not change.
//!
//! An error is an answer with status ≥ 500 (the gateway's 502/503/504 after its failover, and
//! 500s); client errors (4xx) and rate limits are requests, not errors.

use super::significance::{self, Moments};
use crate::config::Config;
use crate::metrics::Metrics;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Latency and TTFT samples kept per variant.
pub const SAMPLES: usize = 10_000;

/// What one experiment request did (read from its context after the answer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub status: u16,
    pub duration: Duration,
    pub ttft: Option<Duration>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spend_usd: f64,
}

/// The newest samples, oldest dropped first.
#[derive(Default)]
struct Window(VecDeque<f64>);

impl Window {
    fn push(&mut self, x: f64) {
        if self.0.len() == SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(x);
    }

    /// Nearest-rank percentiles (`ps` in [0, 1]) over the window.
    fn percentiles<const N: usize>(&self, ps: [f64; N]) -> [Option<f64>; N] {
        let mut sorted: Vec<f64> = self.0.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        ps.map(|p| {
            let last = sorted.len().checked_sub(1)?;
            sorted.get((last as f64 * p).round() as usize).copied()
        })
    }
}

#[derive(Default)]
struct VariantStats {
    requests: u64,
    errors: u64,
    latency: Window,
    ttft: Window,
    prompt_tokens: u64,
    completion_tokens: u64,
    spend_usd: f64,
    scores: Moments,
}

/// Per-variant figures of this replica, by `<experiment>/<variant>`.
#[derive(Default)]
pub struct ExperimentStats {
    variants: Mutex<HashMap<String, VariantStats>>,
}

impl ExperimentStats {
    /// Counts an answered request of `variant`.
    pub fn record(&self, variant: &str, o: &Outcome) {
        let mut map = self.variants.lock();
        if !map.contains_key(variant) {
            map.insert(variant.to_owned(), VariantStats::default());
        }
        let Some(s) = map.get_mut(variant) else {
            return;
        };
        s.requests += 1;
        if o.status >= 500 {
            s.errors += 1;
        }
        s.latency.push(o.duration.as_secs_f64());
        if let Some(t) = o.ttft {
            s.ttft.push(t.as_secs_f64());
        }
        s.prompt_tokens += o.prompt_tokens;
        s.completion_tokens += o.completion_tokens;
        s.spend_usd += o.spend_usd;
    }

    /// Counts a feedback score for `variant`.
    pub fn feedback(&self, variant: &str, score: f64) {
        self.variants
            .lock()
            .entry(variant.to_owned())
            .or_default()
            .scores
            .add(score);
    }

    /// At start and after a reload: forgets variants the config no longer has (the others keep
    /// their figures), and creates the feedback series of every variant at zero.
    pub fn sync(&self, config: &Config, metrics: &Metrics) {
        let mut live = Vec::new();
        for s in config.scenarios.values() {
            for v in s.experiment.iter().flat_map(|e| e.variants.iter()) {
                if let Some(tag) = &v.scenario.variant {
                    metrics.feedback_total.with_label_values(&[&s.name, tag]);
                    metrics
                        .feedback_score_sum
                        .with_label_values(&[&s.name, tag]);
                    live.push(tag.as_str());
                }
            }
        }
        self.variants
            .lock()
            .retain(|tag, _| live.contains(&tag.as_str()));
    }

    /// `GET /admin/experiments`: every experiment of `config`, each variant's figures and its
    /// p-values against the first variant.
    pub fn snapshot(&self, config: &Config) -> Value {
        let map = self.variants.lock();
        let empty = VariantStats::default();
        let mut experiments = Vec::new();
        for s in config.scenarios.values() {
            let Some(e) = &s.experiment else { continue };
            let of = |tag: &Option<String>| tag.as_ref().and_then(|t| map.get(t)).unwrap_or(&empty);
            let first = e
                .variants
                .first()
                .map_or(&empty, |v| of(&v.scenario.variant));
            let variants: Vec<Value> = e
                .variants
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let st = of(&v.scenario.variant);
                    let vs_first = |f: &dyn Fn() -> Option<f64>| if i == 0 { None } else { f() };
                    let [l50, l95] = st.latency.percentiles([0.5, 0.95]);
                    let [t50, t95] = st.ttft.percentiles([0.5, 0.95]);
                    json!({
                        "name": v.name,
                        "weight": v.weight,
                        "requests": st.requests,
                        "errors": st.errors,
                        "error_rate": (st.requests > 0).then(|| st.errors as f64 / st.requests as f64),
                        "latency_p50_seconds": l50,
                        "latency_p95_seconds": l95,
                        "ttft_p50_seconds": t50,
                        "ttft_p95_seconds": t95,
                        "tokens": {"prompt": st.prompt_tokens, "completion": st.completion_tokens},
                        "spend_usd": st.spend_usd,
                        "feedback_count": st.scores.n,
                        "mean_score": st.scores.mean(),
                        "p_value_error_rate": vs_first(&|| significance::two_proportion(
                            first.errors, first.requests, st.errors, st.requests,
                        )),
                        "p_value_score": vs_first(&|| significance::welch(&first.scores, &st.scores)),
                    })
                })
                .collect();
            experiments.push(json!({
                "scenario": s.name,
                "name": e.name,
                "sticky": e.sticky,
                "variants": variants,
            }));
        }
        json!({
            "scope": "replica",
            "error": "status >= 500",
            "tests": {
                "error_rate": significance::ERROR_RATE_TEST,
                "score": significance::SCORE_TEST,
                "versus": "the first variant",
            },
            "experiments": experiments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(exp: &str) -> Config {
        let yaml = format!(
            "providers:\n  m: {{ type: mock }}\nscenarios:\n  s:\n    experiment:\n      name: {exp}\n      variants:\n        - {{ name: a, weight: 1, targets: [{{ provider: m }}] }}\n        - {{ name: b, weight: 1, targets: [{{ provider: m }}] }}\n"
        );
        Config::from_str_at(&yaml, Path::new("t.yaml")).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn figures_add_up_and_compare_with_the_first_variant() {
        let stats = ExperimentStats::default();
        let cfg = config("e");
        for i in 0..100u64 {
            let status = if i % 10 == 0 { 502 } else { 200 };
            stats.record(
                "e/a",
                &Outcome {
                    status,
                    duration: ms(i + 1),
                    ttft: Some(ms(1)),
                    prompt_tokens: 2,
                    completion_tokens: 3,
                    spend_usd: 0.5,
                },
            );
            stats.record(
                "e/b",
                &Outcome {
                    status: if i % 4 == 0 { 503 } else { 429 },
                    duration: ms(10),
                    ..Default::default()
                },
            );
        }
        for s in [1.0, 0.5, 1.0] {
            stats.feedback("e/a", s);
        }
        for s in [-1.0, 0.0, -0.5] {
            stats.feedback("e/b", s);
        }
        let v = stats.snapshot(&cfg);
        let e = &v["experiments"][0];
        assert_eq!(e["scenario"], "s");
        assert_eq!(e["sticky"], "user");
        let (a, b) = (&e["variants"][0], &e["variants"][1]);
        assert_eq!(a["requests"], 100);
        assert_eq!(a["errors"], 10);
        assert_eq!(a["error_rate"], 0.1);
        assert_eq!(a["tokens"], json!({"prompt": 200, "completion": 300}));
        assert_eq!(a["spend_usd"], 50.0);
        assert_eq!(a["latency_p50_seconds"], 0.051);
        assert_eq!(a["latency_p95_seconds"], 0.095);
        assert_eq!(a["feedback_count"], 3);
        assert!(a["p_value_error_rate"].is_null() && a["p_value_score"].is_null());
        assert_eq!(b["errors"], 25, "429s are not errors");
        assert!(b["ttft_p50_seconds"].is_null());
        assert_eq!(b["mean_score"], -0.5);
        for k in ["p_value_error_rate", "p_value_score"] {
            let p = b[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p), "{k} {p}");
        }
        assert_eq!(v["tests"]["score"], "Welch t-test");
    }

    #[test]
    fn a_reload_keeps_only_variants_whose_names_survive() {
        let stats = ExperimentStats::default();
        let metrics = Metrics::new().unwrap();
        stats.record("e/a", &Outcome::default());
        stats.record("gone/a", &Outcome::default());
        stats.sync(&config("e"), &metrics);
        let v = stats.snapshot(&config("e"));
        assert_eq!(v["experiments"][0]["variants"][0]["requests"], 1);
        assert_eq!(stats.variants.lock().len(), 1);
        stats.sync(&config("f"), &metrics);
        let v = stats.snapshot(&config("f"));
        assert_eq!(v["experiments"][0]["variants"][0]["requests"], 0);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(r#"ai_gateway_feedback_total{scenario="s",variant="f/b"} 0"#),
            "{text}"
        );
    }
}
