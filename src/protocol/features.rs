//! Request features: the parts of a chat request that change what an answer must be (tools, a
//! response format, several choices, …). A request says which it uses, a provider which it
//! serves, a target which it may drop; routing compares the three so no target silently ignores
//! what the client asked for (docs/compatibility.md).
//!
//! A set is a bit mask: computing, comparing and carrying it costs nothing per request.

use std::fmt;

/// One request feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// `tools` / `functions` offered to the model.
    Tools,
    /// The request continues a tool call: its last message is a tool result.
    ToolHistory,
    /// `response_format` of type `json_object` or `json_schema`.
    ResponseFormat,
    /// `n` greater than 1.
    N,
    /// `logprobs: true` or `top_logprobs`.
    Logprobs,
    /// An `image_url` content part.
    Images,
    /// An `input_audio` part, or audio output (`audio`, `modalities: ["audio"]`).
    Audio,
    /// `stream: true`.
    Stream,
}

impl Feature {
    pub const ALL: [Feature; 8] = [
        Feature::Tools,
        Feature::ToolHistory,
        Feature::ResponseFormat,
        Feature::N,
        Feature::Logprobs,
        Feature::Images,
        Feature::Audio,
        Feature::Stream,
    ];

    /// The name used in config (`accept_unsupported`), headers and errors.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Tools => "tools",
            Feature::ToolHistory => "tool_history",
            Feature::ResponseFormat => "response_format",
            Feature::N => "n",
            Feature::Logprobs => "logprobs",
            Feature::Images => "images",
            Feature::Audio => "audio",
            Feature::Stream => "stream",
        }
    }

    /// The request field an error about this feature points at (`param`).
    pub fn param(self) -> &'static str {
        match self {
            Feature::Tools => "tools",
            Feature::ToolHistory | Feature::Images => "messages",
            Feature::ResponseFormat => "response_format",
            Feature::N => "n",
            Feature::Logprobs => "logprobs",
            Feature::Audio => "audio",
            Feature::Stream => "stream",
        }
    }

    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether a target may be configured to drop this feature (`accept_unsupported`): only
    /// fields whose removal leaves a well-formed request that still means the same question.
    pub fn droppable(self) -> bool {
        matches!(
            self,
            Feature::Tools | Feature::ResponseFormat | Feature::N | Feature::Logprobs
        )
    }

    /// The top-level request fields that carry this feature (removed when it is dropped).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Feature::Tools => &[
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "functions",
                "function_call",
            ],
            Feature::ResponseFormat => &["response_format"],
            Feature::N => &["n"],
            Feature::Logprobs => &["logprobs", "top_logprobs"],
            Feature::Audio => &["audio", "modalities"],
            Feature::Stream => &["stream", "stream_options"],
            Feature::ToolHistory | Feature::Images => &[],
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(u16);

impl Features {
    pub const NONE: Features = Features(0);
    pub const ALL: Features = Features((1 << Feature::ALL.len()) - 1);

    pub const fn of(list: &[Feature]) -> Features {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Features(bits)
    }

    pub fn insert(&mut self, f: Feature) {
        self.0 |= f.bit();
    }

    pub fn contains(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The features of `self` not in `other`.
    pub fn without(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }

    pub fn and(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    pub fn or(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// Whether a top-level request field belongs to one of these features.
    pub fn owns_field(self, key: &str) -> bool {
        !self.is_empty() && self.iter().any(|f| f.fields().contains(&key))
    }
}

/// Comma-separated names (`tools,n`): the `x-gateway-dropped` header and the access log.
impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, feature) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(feature.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_compare_and_print_in_a_stable_order() {
        let mut asked = Features::NONE;
        asked.insert(Feature::N);
        asked.insert(Feature::Tools);
        asked.insert(Feature::Stream);
        let served = Features::of(&[Feature::Stream, Feature::Images]);
        let missing = asked.without(served);
        assert_eq!(missing.to_string(), "tools,n");
        assert!(missing.owns_field("tool_choice") && missing.owns_field("n"));
        assert!(!missing.owns_field("temperature") && !missing.owns_field("stream"));
        assert_eq!(Features::ALL.iter().count(), Feature::ALL.len());
        for f in Feature::ALL {
            assert_eq!(Feature::from_name(f.name()), Some(f));
        }
    }
}
