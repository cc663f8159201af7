//! A complete chat answer in neutral form: what the cache stores and what a translated or
//! captured answer is reduced to, whichever provider produced it and whether it was streamed.

use super::chunks::Usage;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub content: String,
    pub reasoning: String,
    pub finish_reason: String,
    pub usage: Usage,
    pub model: String,
    pub created: u64,
}

impl Answer {
    /// Approximate bytes held, for the cache's byte bound.
    pub fn bytes(&self) -> usize {
        self.content.len() + self.reasoning.len() + self.model.len() + self.finish_reason.len() + 96
    }
}
