//! What a request is expected to use, for client limits reserved before any upstream is asked:
//! prompt tokens counted with the tokenizer (only when a limit counts tokens), `max_tokens` or
//! the configured completion estimate, and the price at the dearest target of the scenario
//! (routing may pick any of them). Embeddings and completions count their `input` / `prompt`;
//! embeddings expect no completion.

use crate::config::{Client, Config, Scenario};
use crate::limits::{self, Demand};
use crate::protocol::{ops, ChatRequest, Operation};

/// The estimate and the prompt part of it (charged when the upstream reports no usage).
pub struct Estimate {
    pub demand: Demand,
    pub prompt_tokens: u64,
    /// Whether the client's limits count tokens (TPM or a budget).
    pub counts_tokens: bool,
}

pub fn estimate(
    config: &Config,
    scenario: &Scenario,
    client: &Client,
    req: &ChatRequest,
) -> Estimate {
    let counts_tokens = client.tpm.is_some() || client.budget.is_some();
    let prompt_tokens = match (counts_tokens, req.op) {
        (false, _) => 0,
        (true, Operation::Chat) => limits::prompt_tokens(&req.messages),
        (true, op) => ops::prompt_tokens(op, &req.rest, limits::count_tokens),
    };
    let completion = if req.op == Operation::Embeddings {
        0
    } else {
        ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| req.rest.iter().find(|(n, _)| n == k))
            .and_then(|(_, v)| v.get().parse::<u64>().ok())
            .unwrap_or(config.completion_estimate)
    };
    Estimate {
        demand: Demand {
            tokens: if counts_tokens {
                prompt_tokens + completion
            } else {
                0
            },
            usd: scenario
                .targets
                .iter()
                .map(|t| limits::usd(t.cost, prompt_tokens, completion))
                .fold(0.0, f64::max),
        },
        prompt_tokens,
        counts_tokens,
    }
}

/// Whether any limit applies to `client`.
pub fn is_limited(client: &Client) -> bool {
    client.rpm.is_some()
        || client.tpm.is_some()
        || client.budget.is_some()
        || client.max_concurrency.is_some()
}
