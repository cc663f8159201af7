//! The gateway.yaml v1 schema as written on disk: serde types with `deny_unknown_fields`, so a
//! typo is a load error with its position rather than a silently ignored key. Compilation into
//! the runtime [`super::Config`] happens in `compile/`.

use super::units::{Dur, EnvString, Size};
use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<EnvString>,
    pub threads: Option<usize>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub limits: RawLimits,
    pub clients: Option<Vec<RawClient>>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub providers: IndexMap<String, RawProvider>,
    #[serde(default)]
    pub scenarios: IndexMap<String, RawScenario>,
    pub default_scenario: Option<EnvString>,
    #[serde(default)]
    pub cache: RawCacheStore,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub responses: RawResponses,
    #[serde(default)]
    pub state: RawState,
}

/// Where state shared by replicas lives (limits, budgets, conversations, cache).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub backend: Option<StateBackend>,
    pub url: Option<EnvString>,
    pub prefix: Option<EnvString>,
    pub timeout: Option<Dur>,
    pub on_error: Option<OnError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    #[default]
    Memory,
    Redis,
}

/// What limits and budgets do while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Per-replica counters in memory until the store is back.
    #[default]
    Local,
    /// Admit without counting.
    Open,
    /// Refuse clients that have limits (503).
    Closed,
}

/// `/v1/responses`: how long stored responses are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    pub ttl: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<EnvString>,
    pub api_key: Option<EnvString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body: Option<Size>,
    /// Completion tokens assumed for TPM/budget reservations when a request sets no max_tokens.
    pub completion_estimate: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub api_key: Option<EnvString>,
    pub scenarios: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget: Option<RawBudget>,
    pub max_concurrency: Option<u32>,
    /// May force an experiment's variant with the `x-gateway-variant` header (QA).
    pub pick_variant: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub usd: Option<f64>,
    pub tokens: Option<u64>,
    pub per: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Minute,
    Hour,
    Day,
    Month,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Dur>,
    pub first_token: Option<Dur>,
    pub idle: Option<Dur>,
    pub total: Option<Dur>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failure_threshold: Option<u32>,
    pub open_for: Option<Dur>,
    pub success_threshold: Option<u32>,
    pub half_open_probes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub breaker: RawBreaker,
    pub max_concurrency: Option<u32>,
    /// Patient privacy for every target (`off`, or `{detect, action}`).
    pub privacy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderType {
    Openai,
    Dify,
    /// Claude through Anthropic's Messages API.
    Anthropic,
    /// Answers in-process, without network: demos, benchmarks, a first run with no keys.
    Mock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifyApp {
    Chat,
    Agent,
    Chatflow,
    Workflow,
    Completion,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Required for openai, anthropic and dify, rejected for mock.
    pub base_url: Option<EnvString>,
    pub api_key: Option<EnvString>,
    pub timeouts: Option<RawTimeouts>,
    pub retry: Option<RawRetry>,
    pub breaker: Option<RawBreaker>,
    pub max_concurrency: Option<u32>,
    // Dify only.
    pub app: Option<DifyApp>,
    pub query_input: Option<String>,
    pub output: Option<String>,
    pub inputs: Option<IndexMap<String, String>>,
    pub system_input: Option<String>,
    pub reasoning: Option<bool>,
    // Anthropic only.
    /// `anthropic-version` header (default 2023-06-01).
    pub version: Option<EnvString>,
    /// `anthropic-beta` values a client may pass through (allow-list).
    pub beta: Option<Vec<String>>,
    // Mock only.
    /// Fixed answer text; absent = the answer echoes the last user message.
    pub reply: Option<String>,
    /// Delay before the first token.
    pub latency: Option<Dur>,
    /// Delay between stream chunks.
    pub chunk_delay: Option<Dur>,
    /// Fraction of requests answered with `status`, in [0, 1].
    pub fail_rate: Option<f64>,
    /// Status of a failed answer, 400..=599.
    pub status: Option<u16>,
    /// `Retry-After` of failed answers.
    pub retry_after: Option<Dur>,
    /// A stream ends after this many content chunks, with no finish reason and no `[DONE]`.
    pub cut_after: Option<usize>,
    // Every type.
    /// Patient privacy for this provider's targets (`off`, or `{detect, action}`).
    pub privacy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Failover,
    RoundRobin,
    Weighted,
    LeastLatency,
    LeastBusy,
    Cost,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub models: Option<Vec<String>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub cache: Option<RawScenarioCache>,
    pub retry: Option<RawRetry>,
    pub timeouts: Option<RawTimeouts>,
    pub output: Option<RawOutput>,
    pub privacy: Option<serde_json::Value>,
    /// Variants with targets of their own, instead of `targets`.
    pub experiment: Option<RawExperiment>,
}

/// A scenario's structured output: a JSON Schema (a file, or inline) its answers must match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub schema_file: Option<String>,
    pub schema: Option<serde_json::Value>,
    pub repair_attempts: Option<u32>,
}

/// An A/B (or A/B/n) experiment: each request goes to one variant, chosen by a stable hash.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    pub name: String,
    pub sticky: Option<Sticky>,
    #[serde(default)]
    pub variants: Vec<RawVariant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub weight: f64,
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
}

/// Who keeps the same variant across requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// The request's `user`, else its session, else nobody (a draw per request).
    #[default]
    User,
    /// The request's session, else a draw per request.
    Session,
    /// A draw per request.
    Request,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default)]
    pub metadata: IndexMap<String, serde_json::Value>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenarioCache {
    pub ttl: Dur,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: String,
    pub model: Option<EnvString>,
    pub weight: Option<u32>,
    pub cost: Option<RawCost>,
    pub system_prompt: Option<String>,
    pub system_prompt_file: Option<String>,
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    pub inputs: Option<IndexMap<String, String>>,
    pub system_prompt_mode: Option<SystemPromptMode>,
    pub accept_unsupported: Option<Vec<String>>,
    pub privacy: Option<serde_json::Value>,
}

/// How a target's `system_prompt` meets the client's own system messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemPromptMode {
    /// The target's prompt as a first system message, the client's kept after it.
    #[default]
    Prepend,
    /// The target's prompt only; the client's system and developer messages are removed.
    Replace,
    /// One system message: the target's prompt, a blank line, the client's system texts.
    Merge,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheStore {
    pub max_entries: Option<u64>,
    pub max_bytes: Option<Size>,
    /// The largest answer shared through Redis; bigger ones are served but stay local.
    pub max_entry_bytes: Option<Size>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace_period: Option<Dur>,
}
