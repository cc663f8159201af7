//! gateway.yaml: loading, validation and the compiled, immutable [`Config`] the request path reads.
//!
//! Loading is two-stage: `raw` holds the on-disk schema (strict serde types), `compile` checks
//! everything that serde cannot (references between sections, strategy requirements, templates,
//! URLs) and produces [`Config`]. Every problem found is reported, not just the first.

mod compile;
pub mod env;
pub mod positions;
pub mod raw;
pub mod units;
pub mod view;

use indexmap::IndexMap;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use raw::{
    BudgetPeriod, DifyApp, LogFormat, OnError, ProviderType, StateBackend, Sticky, Strategy,
    SystemPromptMode,
};
pub use units::Secret;

/// How bad a finding is: errors stop a load, warnings are printed by `--check` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a config file, with a position (`file:line:column`) where the parser knows
/// it, else the key path (`scenarios.x.targets[1].provider`).
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.location, self.message)
    }
}

/// A failed load: every diagnostic found (errors and warnings).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigError(pub Vec<Diagnostic>);

fn render(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub success_threshold: u32,
    pub half_open_probes: u32,
}

/// Where a provider lives, split once at load so the request path never parses URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1` (may be empty).
    pub base_path: String,
}

impl UpstreamUrl {
    /// The `Host` header value: the port is omitted when it is the scheme's default.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct DifySettings {
    pub app: DifyApp,
    pub query_input: String,
    pub output: Option<String>,
    /// Template names in [`Config::templates`], by Dify input variable.
    pub inputs: IndexMap<String, String>,
    pub system_input: Option<String>,
    pub reasoning: bool,
}

/// How a `type: mock` provider answers. It makes no network calls: the knobs shape the answer
/// and its timing so demos, benchmarks and failover can be exercised without an upstream.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// Fixed answer text; `None` echoes the last user message.
    pub reply: Option<String>,
    /// Delay before the answer starts (the first token).
    pub latency: Duration,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// Fraction of requests, in [0, 1], answered with `status` instead.
    pub fail_rate: f64,
    /// Status of a failed answer, 400..=599.
    pub status: u16,
    /// `Retry-After` of failed answers, in whole seconds.
    pub retry_after: Option<u64>,
    /// A stream ends after this many content chunks, with no finish reason and no `[DONE]`.
    pub cut_after: Option<usize>,
}

/// How a `type: anthropic` provider is called (Claude through the Messages API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicSettings {
    /// The `anthropic-version` header of every call.
    pub version: String,
    /// `anthropic-beta` values a client may pass through; others are not forwarded.
    pub beta: Vec<String>,
}

/// The `anthropic-version` a provider without `version` sends.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone)]
pub enum ProviderKind {
    OpenAi,
    Dify(DifySettings),
    Anthropic(AnthropicSettings),
    Mock(MockSettings),
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// For a mock provider, a placeholder (`http://mock:0`) that is never connected to.
    pub url: UpstreamUrl,
    /// `None` when the key expanded to nothing: routing skips such a provider unless it is a
    /// mock (see [`Provider::missing_key`]).
    pub api_key: Option<Secret>,
    pub timeouts: Timeouts,
    pub retry: Retry,
    pub breaker: Breaker,
    pub max_concurrency: u32,
}

impl Provider {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Dify(_) => "dify",
            ProviderKind::Anthropic(_) => "anthropic",
            ProviderKind::Mock(_) => "mock",
        }
    }

    /// True when the provider needs a key and has none: routing skips it. A mock provider
    /// answers without one.
    pub fn missing_key(&self) -> bool {
        self.api_key.is_none() && !matches!(self.kind, ProviderKind::Mock(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// USD per 1M prompt tokens.
    pub input: f64,
    /// USD per 1M completion tokens.
    pub output: f64,
    /// USD per 1M prompt tokens read from the upstream's prompt cache (`input` unless set).
    pub cached_input: f64,
}

#[derive(Debug)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// Upstream model (openai), or the model a mock answer reports; `None` forwards the
    /// client's `model`.
    pub model: Option<String>,
    pub weight: Option<u32>,
    pub cost: Option<Cost>,
    /// Template name in [`Config::templates`].
    pub system_prompt: Option<String>,
    pub system_prompt_mode: SystemPromptMode,
    /// Features this target serves by dropping them (`accept_unsupported`).
    pub accept_unsupported: crate::protocol::Features,
    /// Defaults merged under the client's values.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Dify inputs specific to this target (template names), over the provider's.
    pub inputs: IndexMap<String, String>,
    /// Effective timeouts: scenario override over provider over defaults.
    pub timeouts: Timeouts,
    pub retry: Retry,
    /// Effective patient privacy: target over provider over scenario over defaults.
    pub privacy: Option<crate::privacy::Privacy>,
}

#[derive(Debug, Default, Clone)]
pub struct Match {
    pub headers: Vec<(String, String)>,
    pub metadata: Vec<(String, serde_json::Value)>,
    pub clients: Vec<String>,
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub models: Vec<String>,
    pub matcher: Option<Match>,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub cache_ttl: Option<Duration>,
    /// SHA-256 of everything in the scenario that shapes an answer (targets, prompts, params,
    /// inputs, output schema): part of the response-cache key, so a reload that changes them
    /// misses.
    pub fingerprint: [u8; 32],
    /// `output:`: the JSON Schema every answer is validated against.
    pub output: Option<Arc<crate::output::OutputSpec>>,
    /// Set on a scenario with `experiment:` (its own `targets` is then empty): each request is
    /// served by one variant's scenario.
    pub experiment: Option<Experiment>,
    /// On a variant's scenario: `<experiment>/<variant>`, the `x-gateway-variant` header and
    /// the metrics' `variant` label. `None` everywhere else.
    pub variant: Option<String>,
}

impl Scenario {
    /// Every target the scenario may send to: its own, or every variant's. What startup and
    /// reload (router state), readiness and the config view walk; the request path uses the
    /// chosen variant's scenario instead.
    pub fn all_targets(&self) -> impl Iterator<Item = &Target> {
        let variants = self.experiment.iter().flat_map(|e| e.variants.iter());
        self.targets
            .iter()
            .chain(variants.flat_map(|v| v.scenario.targets.iter()))
    }
}

/// A scenario's `experiment:` compiled: variants in file order.
#[derive(Debug)]
pub struct Experiment {
    pub name: String,
    pub sticky: Sticky,
    pub variants: Vec<Variant>,
}

impl Experiment {
    /// The variant called `name`.
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }
}

#[derive(Debug)]
pub struct Variant {
    pub name: String,
    /// Non-negative; the experiment's weights have a positive sum.
    pub weight: f64,
    /// A full scenario (the parent's name, models, matcher, cache) with the variant's targets
    /// and strategy: after the pick, the pipeline serves it like any scenario.
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetLimit {
    Usd(f64),
    Tokens(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub limit: BudgetLimit,
    pub per: BudgetPeriod,
}

#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub api_key: Option<Secret>,
    /// `None` = every scenario (`"*"`).
    pub scenarios: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget: Option<Budget>,
    pub max_concurrency: Option<u32>,
    /// May force an experiment variant (`x-gateway-variant` request header).
    pub pick_variant: bool,
}

impl Client {
    pub fn allows(&self, scenario: &str) -> bool {
        self.scenarios
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == scenario))
    }
}

/// The `state:` section: the backend of limits, budgets, conversations and the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// `redis://` or `rediss://`, possibly with a password: a secret.
    pub url: Option<Secret>,
    pub prefix: String,
    /// Per command; a slower answer counts as an error.
    pub timeout: Duration,
    pub on_error: OnError,
}

#[derive(Debug)]
pub struct Config {
    /// The file this was loaded from; relative paths inside it resolve against its folder.
    pub path: PathBuf,
    pub listen: SocketAddr,
    /// Worker threads of the API listener; `None` = one per core.
    pub threads: Option<usize>,
    pub admin_listen: SocketAddr,
    pub admin_api_key: Option<Secret>,
    pub max_body: usize,
    /// Completion tokens reserved for a request without `max_tokens` (TPM and budgets).
    pub completion_estimate: u64,
    /// `None` = no client authentication (sidecar reached over localhost only).
    pub clients: Option<Vec<Client>>,
    pub providers: IndexMap<String, Arc<Provider>>,
    pub scenarios: IndexMap<String, Scenario>,
    /// Scenario name or alias → index into `scenarios`.
    pub models: HashMap<String, usize>,
    pub default_scenario: Option<usize>,
    pub cache_max_entries: u64,
    pub cache_max_bytes: u64,
    /// The largest answer stored in a shared cache (`cache.max_entry_bytes`).
    pub cache_max_entry_bytes: u64,
    /// Where shared state lives (`state:`); read once at startup.
    pub state: StateConfig,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    pub grace_period: Duration,
    /// How long a stored `/v1/responses` response stays available (`responses.ttl`).
    pub responses_ttl: Duration,
    /// System prompts and Dify inputs, compiled once.
    pub templates: minijinja::Environment<'static>,
    pub warnings: Vec<Diagnostic>,
    /// Every file this config was read from (itself, prompt files): what the reload watcher
    /// watches.
    pub sources: Vec<PathBuf>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![Diagnostic {
                severity: Severity::Error,
                location: path.display().to_string(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Self::from_str_at(&text, path)
    }

    /// Parses `text` as if it were the file at `path` (used for positions and relative paths).
    pub fn from_str_at(text: &str, path: &Path) -> Result<Config, ConfigError> {
        compile::compile(text, path)
    }

    /// Every key in the config (providers, clients, admin), for scrubbing upstream text.
    pub fn secrets(&self) -> Vec<&str> {
        let providers = self.providers.values().filter_map(|p| p.api_key.as_ref());
        let clients = self
            .clients
            .iter()
            .flatten()
            .filter_map(|c| c.api_key.as_ref());
        providers
            .chain(clients)
            .chain(self.admin_api_key.as_ref())
            .map(Secret::expose)
            .collect()
    }

    pub fn scenario_index(&self, name: &str) -> Option<usize> {
        self.scenarios.get_index_of(name)
    }
}
