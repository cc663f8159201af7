//! Fixtures for the provider contract suite (`tests/providers.rs`): one per provider type, each
//! able to put its provider into a fault given as data. HTTP mocks turn their knobs; a provider
//! configured only through YAML writes the fault into its provider block.
#![allow(dead_code)]

use super::anthropic::{AnthropicKnobs, MockAnthropic, MOCK_KEY};
use super::dify::{key, DifyKnobs, MockDify, Mode};
use super::{Knobs, MockOpenAi};
use std::time::Duration;

/// Content chunks a `CutMidStream` provider sends before its stream ends.
pub const CUT_AFTER: usize = 2;
/// Pause between the chunks of a `SlowStream` answer (20 or more chunks: several seconds).
pub const SLOW_CHUNK_DELAY: Duration = Duration::from_millis(200);

/// What the provider under test does with every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers normally.
    None,
    /// Answers every request with this HTTP status before any content, with `Retry-After:
    /// <seconds>` when given. 4xx bodies say the request was at fault (an invalid parameter),
    /// 429 says rate limited, 5xx is a server error.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Accepts the request and says nothing for far longer than any test waits.
    Silent,
    /// Streams `CUT_AFTER` content chunks, then ends with no finish chunk and no `[DONE]`.
    CutMidStream,
    /// Streams its answer in 20 or more chunks `SLOW_CHUNK_DELAY` apart.
    SlowStream,
}

/// A provider the contract suite can configure and observe.
pub trait Fixture: Send + Sync + 'static {
    /// The provider's key under `providers:` (and so its `x-gateway-provider`).
    fn name(&self) -> &str;
    /// The fields of the `providers.<name>` flow mapping for a provider behaving as `fault`,
    /// e.g. `type: openai, base_url: "http://…", api_key: k`. The suite adds its own policy
    /// fields (timeouts, retry) after these.
    fn provider_yaml(&self, fault: &Fault) -> String;
    /// Extra fields of a scenario target on this provider (e.g. `model: m`), or "".
    fn target_yaml(&self) -> String;
    /// The exact answer text to a single user message `prompt` when healthy.
    fn reply(&self, prompt: &str) -> String;
    /// Requests the upstream received, when there is an upstream to count.
    fn calls(&self) -> Option<usize>;
    /// Answer streams the gateway dropped before their end, when observable.
    fn abandoned(&self) -> Option<usize>;
    /// Calls to the upstream's stop endpoint (Dify stops a task the client left).
    fn stops(&self) -> Option<usize>;
    /// Whether the provider serves `tools` (docs/compatibility.md): if not, routing must skip
    /// it for a request with tools, never answer it as if they were not there.
    fn serves_tools(&self) -> bool;
}

/// An OpenAI-compatible upstream: the in-process `MockOpenAi`.
pub struct OpenAiFixture {
    pub mock: MockOpenAi,
}

const OPENAI_REPLY: &str =
    "The OpenAI-compatible upstream says: use a rich cream at night and drink water.";

impl OpenAiFixture {
    pub async fn start() -> OpenAiFixture {
        OpenAiFixture {
            mock: MockOpenAi::start_with(Self::knobs(&Fault::None)).await,
        }
    }

    fn knobs(fault: &Fault) -> Knobs {
        let mut k = Knobs {
            content: OPENAI_REPLY.into(),
            ..Default::default()
        };
        match fault {
            Fault::None => {}
            Fault::Status {
                status,
                retry_after,
            } => {
                k.status = *status;
                k.retry_after = *retry_after;
                k.error_body = match status {
                    429 => r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                    400..=499 => r#"{"error":{"message":"Invalid value for 'temperature': expected at most 2.","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#,
                    _ => r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
                }
                .into();
            }
            Fault::Silent => k.never_answer = true,
            Fault::CutMidStream => {
                k.chunks = 2 * CUT_AFTER;
                k.cut_after = Some(CUT_AFTER);
            }
            Fault::SlowStream => {
                k.chunks = 20;
                k.chunk_interval = SLOW_CHUNK_DELAY;
            }
        }
        k
    }
}

impl Fixture for OpenAiFixture {
    fn name(&self) -> &str {
        "openai"
    }
    fn serves_tools(&self) -> bool {
        true
    }
    fn provider_yaml(&self, fault: &Fault) -> String {
        let knobs = Self::knobs(fault);
        self.mock.set(|k| *k = knobs);
        format!(
            r#"type: openai, base_url: "{}", api_key: sk-contract-openai"#,
            self.mock.url()
        )
    }
    fn target_yaml(&self) -> String {
        "model: contract-model".into()
    }
    fn reply(&self, _prompt: &str) -> String {
        OPENAI_REPLY.into()
    }
    fn calls(&self) -> Option<usize> {
        Some(self.mock.count())
    }
    fn abandoned(&self) -> Option<usize> {
        Some(self.mock.abandoned())
    }
    fn stops(&self) -> Option<usize> {
        None
    }
}

/// A Dify chat app: the in-process `MockDify`.
pub struct DifyFixture {
    pub mock: MockDify,
}

impl DifyFixture {
    pub async fn start() -> DifyFixture {
        DifyFixture {
            mock: MockDify::start().await,
        }
    }

    fn knobs(fault: &Fault) -> DifyKnobs {
        let mut k = DifyKnobs::default();
        match fault {
            Fault::None => {}
            Fault::Status {
                status,
                retry_after,
            } => {
                k.fail_with = Some(match status {
                    429 => (429, "too_many_requests", "Too many requests."),
                    400..=499 => (*status, "invalid_param", "temperature must be at most 2"),
                    _ => (*status, "internal_server_error", "Internal Server Error"),
                });
                k.retry_after = *retry_after;
            }
            Fault::Silent => k.latency = Duration::from_secs(600),
            Fault::CutMidStream => {
                k.pieces = 2 * CUT_AFTER;
                k.cut_after = Some(CUT_AFTER);
            }
            Fault::SlowStream => {
                k.pieces = 20;
                k.interval = SLOW_CHUNK_DELAY;
            }
        }
        k
    }
}

impl Fixture for DifyFixture {
    fn name(&self) -> &str {
        "dify"
    }
    fn serves_tools(&self) -> bool {
        false
    }
    fn provider_yaml(&self, fault: &Fault) -> String {
        let knobs = Self::knobs(fault);
        self.mock.set(|k| *k = knobs);
        format!(
            r#"type: dify, base_url: "{}", api_key: {}, app: chat"#,
            self.mock.url(),
            key(Mode::Chat)
        )
    }
    fn target_yaml(&self) -> String {
        String::new()
    }
    /// The mock chat app answers `chat says: ` and the query's last 40 characters.
    fn reply(&self, prompt: &str) -> String {
        let chars: Vec<char> = prompt.chars().collect();
        let tail: String = chars[chars.len().saturating_sub(40)..].iter().collect();
        format!("chat says: {tail}")
    }
    fn calls(&self) -> Option<usize> {
        Some(self.mock.calls().len())
    }
    fn abandoned(&self) -> Option<usize> {
        Some(self.mock.abandoned())
    }
    fn stops(&self) -> Option<usize> {
        Some(self.mock.stops().len())
    }
}

/// The gateway's built-in `type: mock` provider: everything, faults included, is YAML. It
/// assumes one content chunk per word of `reply`; nothing outside the gateway can be counted.
pub struct BuiltinMockFixture;

const BUILTIN_REPLY: &str = "The built-in mock answers: one two three four five six seven eight \
                             nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen \
                             eighteen nineteen twenty.";

impl BuiltinMockFixture {
    pub async fn start() -> BuiltinMockFixture {
        BuiltinMockFixture
    }
}

impl Fixture for BuiltinMockFixture {
    fn name(&self) -> &str {
        "builtin"
    }
    fn serves_tools(&self) -> bool {
        false
    }
    fn provider_yaml(&self, fault: &Fault) -> String {
        let base = format!(r#"type: mock, reply: "{BUILTIN_REPLY}""#);
        match fault {
            Fault::None => format!("{base}, latency: 0ms, chunk_delay: 0ms"),
            Fault::Status {
                status,
                retry_after,
            } => {
                let retry = retry_after.map_or(String::new(), |s| format!(", retry_after: {s}s"));
                format!("{base}, fail_rate: 1.0, status: {status}{retry}")
            }
            Fault::Silent => format!("{base}, latency: 600s"),
            Fault::CutMidStream => format!("{base}, cut_after: {CUT_AFTER}"),
            Fault::SlowStream => format!("{base}, chunk_delay: {}ms", SLOW_CHUNK_DELAY.as_millis()),
        }
    }
    fn target_yaml(&self) -> String {
        String::new()
    }
    fn reply(&self, _prompt: &str) -> String {
        BUILTIN_REPLY.into()
    }
    fn calls(&self) -> Option<usize> {
        None
    }
    fn abandoned(&self) -> Option<usize> {
        None
    }
    fn stops(&self) -> Option<usize> {
        None
    }
}

/// Claude through the Messages API: the in-process `MockAnthropic`.
pub struct AnthropicFixture {
    pub mock: MockAnthropic,
}

const ANTHROPIC_REPLY: &str =
    "Claude says: a ceramide cream at night, a gentle cleanser and a humidifier help dry skin.";

impl AnthropicFixture {
    pub async fn start() -> AnthropicFixture {
        AnthropicFixture {
            mock: MockAnthropic::start_with(Self::knobs(&Fault::None)).await,
        }
    }

    fn knobs(fault: &Fault) -> AnthropicKnobs {
        let mut k = AnthropicKnobs {
            text: ANTHROPIC_REPLY.into(),
            ..Default::default()
        };
        match fault {
            Fault::None => {}
            Fault::Status {
                status,
                retry_after,
            } => {
                k.status = *status;
                k.retry_after = *retry_after;
                k.error_type = match status {
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    400..=499 => "invalid_request_error",
                    _ => "api_error",
                }
                .into();
            }
            Fault::Silent => k.never_answer = true,
            Fault::CutMidStream => {
                k.chunks = 2 * CUT_AFTER;
                k.cut_after = Some(CUT_AFTER);
            }
            Fault::SlowStream => {
                // 40 pieces asked: at least 20 for any text of 40 characters or more.
                k.chunks = 40;
                k.chunk_interval = SLOW_CHUNK_DELAY;
            }
        }
        k
    }
}

impl Fixture for AnthropicFixture {
    fn name(&self) -> &str {
        "claude"
    }
    fn serves_tools(&self) -> bool {
        true
    }
    fn provider_yaml(&self, fault: &Fault) -> String {
        let knobs = Self::knobs(fault);
        self.mock.set(|k| *k = knobs);
        format!(
            r#"type: anthropic, base_url: "{}", api_key: {MOCK_KEY}"#,
            self.mock.url()
        )
    }
    fn target_yaml(&self) -> String {
        "model: claude-test".into()
    }
    fn reply(&self, _prompt: &str) -> String {
        ANTHROPIC_REPLY.into()
    }
    fn calls(&self) -> Option<usize> {
        Some(self.mock.count())
    }
    fn abandoned(&self) -> Option<usize> {
        Some(self.mock.abandoned())
    }
    fn stops(&self) -> Option<usize> {
        None
    }
}
