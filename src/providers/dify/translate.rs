//! Dify stream events → provider-neutral answer events, event by event (spec §3, §8).
//! With the provider's `reasoning: true`, agent thoughts, Dify 1.x `reasoning_chunk` events and
//! a `<think>…</think>` at the start of the answer (`think.rs`) become reasoning; without it
//! the first two are dropped and the tags stay in the text.
//!
//! The translator is fed parsed SSE events and emits [`crate::providers::Event`]s; it knows nothing of sockets,
//! so the same code serves streamed and aggregated answers and is unit-tested on recorded
//! streams split at every byte.

use super::errors::map as map_error;
use super::think::ThinkSplit;
use crate::config::DifyApp;
use crate::error::GatewayError;
use crate::protocol::chunks::Usage;
use crate::protocol::sse::SseEvent;
use crate::providers::Event as Out;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Default)]
struct Thought {
    thought: String,
    observation: String,
}

pub struct Translator {
    app: DifyApp,
    reasoning: bool,
    output: Option<String>,
    provider: String,
    /// `scheme://host[:port]` of the provider, to make host-relative file URLs absolute.
    origin: String,
    pub id: Option<String>,
    pub created: Option<u64>,
    pub task_id: Option<String>,
    pub conversation_id: Option<String>,
    thoughts: HashMap<String, Thought>,
    streamed_text: bool,
    replaced: Option<String>,
    /// The answer's leading `<think>…</think>`, when `reasoning` (boxed: it keeps the
    /// decoder enum's variants close in size).
    think: Option<Box<ThinkSplit>>,
    pub finished: bool,
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f.max(0.0) as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// The new part of `now` given what was emitted before; a rewrite is emitted whole.
fn suffix(emitted: &str, now: &str) -> Option<String> {
    if now.len() > emitted.len() && now.starts_with(emitted) {
        Some(now[emitted.len()..].to_owned())
    } else if !now.is_empty() && !emitted.starts_with(now) {
        Some(format!("\n{now}"))
    } else {
        None
    }
}

impl Translator {
    pub fn new(
        app: DifyApp,
        reasoning: bool,
        output: Option<String>,
        provider: &str,
        origin: String,
    ) -> Self {
        Translator {
            app,
            reasoning,
            output,
            provider: provider.to_owned(),
            origin,
            id: None,
            created: None,
            task_id: None,
            conversation_id: None,
            thoughts: HashMap::new(),
            streamed_text: false,
            replaced: None,
            think: reasoning.then(Box::default),
            finished: false,
        }
    }

    /// The replacement text from output moderation, if any (non-stream answers use it).
    pub fn replaced(&self) -> Option<&str> {
        self.replaced.as_deref()
    }

    fn envelope(&mut self, v: &Value) {
        if self.id.is_none() {
            let id = match self.app {
                DifyApp::Workflow => str_of(v, "workflow_run_id"),
                _ => str_of(v, "message_id"),
            };
            self.id = id.map(|s| format!("chatcmpl-{s}"));
        }
        if self.created.is_none() {
            self.created = v.get("created_at").and_then(Value::as_u64);
        }
        if self.task_id.is_none() {
            self.task_id = str_of(v, "task_id").map(str::to_owned);
        }
        if self.conversation_id.is_none() {
            self.conversation_id = str_of(v, "conversation_id").map(str::to_owned);
        }
    }

    /// Answer text, its leading thinking split off when the provider gives reasoning.
    fn text(&mut self, text: &str, out: &mut Vec<Out>) {
        match &mut self.think {
            Some(think) => think.push(text, out),
            None => out.push(Out::Text(text.to_owned())),
        }
    }

    fn finish(&mut self, usage: Usage, out: &mut Vec<Out>) {
        if let Some(think) = &mut self.think {
            think.finish(out);
        }
        self.finished = true;
        let reason = if self.replaced.is_some() {
            "content_filter"
        } else {
            "stop"
        };
        out.push(Out::Finish { reason, usage });
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with('/') {
            format!("{}{url}", self.origin)
        } else {
            url.to_owned()
        }
    }

    fn workflow_answer(&self, outputs: &Value) -> Option<String> {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(name) = &self.output {
            return outputs.get(name).map(text);
        }
        let obj = outputs.as_object()?;
        let only: Vec<&str> = obj.values().filter_map(Value::as_str).collect();
        if only.len() == 1 {
            return Some(only[0].to_owned());
        }
        if obj.is_empty() {
            None
        } else {
            Some(outputs.to_string())
        }
    }

    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Out>) {
        if self.finished {
            return;
        }
        if ev.event.as_deref() == Some("ping") && ev.data.is_empty() {
            out.push(Out::Ping);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        self.envelope(&v);
        let event = str_of(&v, "event")
            .or(ev.event.as_deref())
            .unwrap_or_default();
        match event {
            "message" | "agent_message" => {
                if let Some(a) = str_of(&v, "answer") {
                    self.text(a, out);
                }
            }
            "text_chunk" => {
                if let Some(t) = v.get("data").and_then(|d| str_of(d, "text")) {
                    self.streamed_text = true;
                    self.text(t, out);
                }
            }
            // Dify ≥ 1.x, an LLM node with `reasoning_format: separated`: the thinking comes
            // in events of its own, `data.reasoning` (`is_final` marks the last).
            "reasoning_chunk" if self.reasoning => {
                let d = &v["data"];
                if let Some(t) = str_of(d, "reasoning").or_else(|| str_of(d, "text")) {
                    out.push(Out::Reasoning(t.to_owned()));
                }
            }
            "agent_thought" if self.reasoning => {
                let id = str_of(&v, "id").unwrap_or_default().to_owned();
                let entry = self.thoughts.entry(id).or_default();
                if let Some(t) = str_of(&v, "thought") {
                    if let Some(s) = suffix(&entry.thought, t) {
                        entry.thought = t.to_owned();
                        out.push(Out::Reasoning(s));
                    }
                }
                if let Some(o) = str_of(&v, "observation") {
                    if let Some(s) = suffix(&entry.observation, o) {
                        let first = entry.observation.is_empty();
                        entry.observation = o.to_owned();
                        let tool = str_of(&v, "tool").unwrap_or("tool");
                        out.push(Out::Reasoning(if first {
                            format!("\n[{tool}] {s}\n")
                        } else {
                            s
                        }));
                    }
                }
            }
            "message_file" => {
                if let Some(url) = str_of(&v, "url") {
                    let url = self.absolute(url);
                    let link = if v.get("type").and_then(Value::as_str) == Some("image") {
                        format!("\n![image]({url})\n")
                    } else {
                        format!("\n[file]({url})\n")
                    };
                    self.text(&link, out);
                }
            }
            "message_replace" => {
                self.replaced = Some(str_of(&v, "answer").unwrap_or_default().to_owned())
            }
            "text_replace" => {
                self.replaced = Some(
                    v.get("data")
                        .and_then(|d| str_of(d, "text"))
                        .unwrap_or_default()
                        .to_owned(),
                )
            }
            "message_end" => {
                let u = &v["metadata"]["usage"];
                let prompt = u64_of(&u["prompt_tokens"]);
                let completion = u64_of(&u["completion_tokens"]);
                let total = u64_of(&u["total_tokens"]).max(prompt + completion);
                // Dify's own usage has no such counts; a build or model plugin that reports
                // them the OpenAI way has them carried through.
                self.finish(
                    Usage {
                        prompt_tokens: prompt,
                        completion_tokens: completion,
                        total_tokens: total,
                        cached_tokens: u64_of(&u["prompt_tokens_details"]["cached_tokens"]),
                        reasoning_tokens: u64_of(
                            &u["completion_tokens_details"]["reasoning_tokens"],
                        ),
                    },
                    out,
                );
            }
            "workflow_finished" if self.app == DifyApp::Workflow => {
                let d = &v["data"];
                match d
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("succeeded")
                {
                    "failed" => {
                        let err = str_of(d, "error")
                            .unwrap_or("workflow failed without an error message");
                        self.finished = true;
                        out.push(Out::Error(GatewayError::UpstreamError(format!(
                            "dify provider {}: workflow failed: {}",
                            self.provider,
                            crate::error::sanitize(err)
                        ))));
                    }
                    _ => {
                        if !self.streamed_text {
                            if let Some(answer) =
                                d.get("outputs").and_then(|o| self.workflow_answer(o))
                            {
                                self.text(&answer, out);
                            }
                        }
                        let total = u64_of(&d["total_tokens"]);
                        self.finish(
                            Usage {
                                prompt_tokens: total,
                                completion_tokens: 0,
                                total_tokens: total,
                                ..Usage::default()
                            },
                            out,
                        );
                    }
                }
            }
            "workflow_paused" | "human_input_required" => self.finish(Usage::default(), out),
            "error" => {
                self.finished = true;
                let status = v.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
                out.push(Out::Error(map_error(
                    &self.provider,
                    status,
                    str_of(&v, "code").unwrap_or("internal_server_error"),
                    str_of(&v, "message").unwrap_or("Dify reported an error"),
                    None,
                )));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sse::SseParser;

    const CHAT: &str = concat!(
        "data: {\"event\": \"message\", \"conversation_id\": \"c-1\", \"message_id\": \"m-1\", \"created_at\": 1705398420, \"task_id\": \"t-1\", \"id\": \"m-1\", \"answer\": \"你好\"}\n\n",
        "event: ping\n\n",
        "data: {\"event\":\"message\",\"conversation_id\":\"c-1\",\"message_id\":\"m-1\",\"created_at\":1705398420,\"task_id\":\"t-1\",\"id\":\"m-1\",\"answer\":\", world\"}\r\n\r\n",
        "data: {\"event\":\"message_file\",\"id\":\"f-1\",\"type\":\"image\",\"belongs_to\":\"assistant\",\"url\":\"/files/x.png?sig=1\",\"conversation_id\":\"c-1\",\"message_id\":\"m-1\"}\n\n",
        "data: {\"event\":\"message_end\",\"conversation_id\":\"c-1\",\"message_id\":\"m-1\",\"task_id\":\"t-1\",\"id\":\"m-1\",\"metadata\":{\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,\"total_price\":\"0.001\"}}}\n\n",
        "data: {\"event\":\"tts_message\",\"task_id\":\"t-1\",\"audio\":\"AAAA\"}\n\n",
    );

    const AGENT: &str = concat!(
        "data: {\"event\":\"agent_thought\",\"id\":\"th-1\",\"task_id\":\"t-2\",\"message_id\":\"m-2\",\"position\":1,\"thought\":\"\",\"observation\":\"\",\"tool\":\"\"}\n\n",
        "data: {\"event\":\"agent_message\",\"id\":\"m-2\",\"task_id\":\"t-2\",\"message_id\":\"m-2\",\"answer\":\"Let me check.\"}\n\n",
        "data: {\"event\":\"agent_thought\",\"id\":\"th-1\",\"task_id\":\"t-2\",\"message_id\":\"m-2\",\"position\":1,\"thought\":\"I should search\",\"observation\":\"\",\"tool\":\"search\"}\n\n",
        "data: {\"event\":\"agent_thought\",\"id\":\"th-1\",\"task_id\":\"t-2\",\"message_id\":\"m-2\",\"position\":1,\"thought\":\"I should search\",\"observation\":\"3 results\",\"tool\":\"search\"}\n\n",
        "data: {\"event\":\"agent_message\",\"id\":\"m-2\",\"task_id\":\"t-2\",\"message_id\":\"m-2\",\"answer\":\" Done.\"}\n\n",
        "data: {\"event\":\"message_end\",\"id\":\"m-2\",\"task_id\":\"t-2\",\"message_id\":\"m-2\",\"metadata\":{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}}\n\n",
    );

    const WORKFLOW: &str = concat!(
        "data: {\"event\":\"workflow_started\",\"workflow_run_id\":\"r-1\",\"task_id\":\"t-3\",\"data\":{\"id\":\"r-1\",\"inputs\":{}}}\n\n",
        "data: {\"event\":\"node_started\",\"workflow_run_id\":\"r-1\",\"task_id\":\"t-3\",\"data\":{\"node_type\":\"llm\",\"inputs\":{\"big\":\"", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "\"}}}\n\n",
        "data: {\"event\":\"text_chunk\",\"workflow_run_id\":\"r-1\",\"task_id\":\"t-3\",\"data\":{\"text\":\"为了\",\"from_variable_selector\":[\"1\",\"text\"]}}\n\n",
        "data: {\"event\":\"text_chunk\",\"workflow_run_id\":\"r-1\",\"task_id\":\"t-3\",\"data\":{\"text\":\"美丽\"}}\n\n",
        "data: {\"event\":\"workflow_finished\",\"workflow_run_id\":\"r-1\",\"task_id\":\"t-3\",\"data\":{\"id\":\"r-1\",\"status\":\"succeeded\",\"outputs\":{\"plan\":\"为了美丽\"},\"total_tokens\":42}}\n\n",
    );

    fn run(
        app: DifyApp,
        reasoning: bool,
        output: Option<&str>,
        pieces: &[&[u8]],
    ) -> (String, Translator) {
        let mut tr = Translator::new(
            app,
            reasoning,
            output.map(str::to_owned),
            "d",
            "https://dify.example".into(),
        );
        let mut p = SseParser::default();
        let mut events = Vec::new();
        let mut outs = Vec::new();
        for piece in pieces {
            p.push(piece, &mut events).unwrap();
            for ev in events.drain(..) {
                tr.on_event(&ev, &mut outs);
            }
        }
        (format!("{outs:?}"), tr)
    }

    /// The same output whether the stream arrives whole, cut at any byte, or byte by byte.
    fn same_at_every_split(
        app: DifyApp,
        reasoning: bool,
        output: Option<&str>,
        text: &str,
    ) -> String {
        let bytes = text.as_bytes();
        let (whole, _) = run(app, reasoning, output, &[bytes]);
        for cut in 0..=bytes.len() {
            let (split, _) = run(app, reasoning, output, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(split, whole, "cut at byte {cut}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(app, reasoning, output, &singles).0, whole);
        whole
    }

    #[test]
    fn chat_stream() {
        let out = same_at_every_split(DifyApp::Chat, false, None, CHAT);
        assert_eq!(
            out,
            r#"[Text("你好"), Ping, Text(", world"), Text("\n![image](https://dify.example/files/x.png?sig=1)\n"), Finish { reason: "stop", usage: Usage { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, cached_tokens: 0, reasoning_tokens: 0 } }]"#
        );
        let (_, tr) = run(DifyApp::Chat, false, None, &[CHAT.as_bytes()]);
        assert_eq!(tr.id.as_deref(), Some("chatcmpl-m-1"));
        assert_eq!(tr.created, Some(1705398420));
        assert_eq!(tr.task_id.as_deref(), Some("t-1"));
        assert_eq!(tr.conversation_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn agent_thoughts_become_reasoning_only_when_asked() {
        let out = same_at_every_split(DifyApp::Agent, true, None, AGENT);
        assert_eq!(
            out,
            r#"[Text("Let me check."), Reasoning("I should search"), Reasoning("\n[search] 3 results\n"), Text(" Done."), Finish { reason: "stop", usage: Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, cached_tokens: 0, reasoning_tokens: 0 } }]"#
        );
        let out = same_at_every_split(DifyApp::Agent, false, None, AGENT);
        assert!(
            !out.contains("Reasoning") && !out.contains("tool_calls"),
            "{out}"
        );
    }

    const SEPARATED: &str = concat!(
        "data: {\"event\":\"reasoning_chunk\",\"task_id\":\"t\",\"message_id\":\"m\",\"data\":{\"message_id\":\"m\",\"node_id\":\"llm\",\"reasoning\":\"Compare \",\"is_final\":false}}\n\n",
        "data: {\"event\":\"reasoning_chunk\",\"task_id\":\"t\",\"message_id\":\"m\",\"data\":{\"message_id\":\"m\",\"node_id\":\"llm\",\"reasoning\":\"them.\",\"is_final\":true}}\n\n",
        "data: {\"event\":\"message\",\"task_id\":\"t\",\"message_id\":\"m\",\"answer\":\"9.8 is larger.\"}\n\n",
        "data: {\"event\":\"message_end\",\"task_id\":\"t\",\"message_id\":\"m\",\"metadata\":{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"total_tokens\":14,\"prompt_tokens_details\":{\"cached_tokens\":2},\"completion_tokens_details\":{\"reasoning_tokens\":6}}}}\n\n",
    );

    #[test]
    fn reasoning_chunks_are_reasoning_only_when_asked() {
        let out = same_at_every_split(DifyApp::Chatflow, true, None, SEPARATED);
        assert_eq!(
            out,
            r#"[Reasoning("Compare "), Reasoning("them."), Text("9.8 is larger."), Finish { reason: "stop", usage: Usage { prompt_tokens: 5, completion_tokens: 9, total_tokens: 14, cached_tokens: 2, reasoning_tokens: 6 } }]"#
        );
        let out = same_at_every_split(DifyApp::Chatflow, false, None, SEPARATED);
        assert!(
            out.starts_with(r#"[Text("9.8 is larger."), Finish"#),
            "{out}"
        );
    }

    /// (reasoning, text) of a chat answer sent as two `message` events cut at `cut`.
    fn think_split_at(answer: &str, cut: usize, reasoning: bool) -> (String, String) {
        let message = |text: &str| {
            format!(
                "data: {{\"event\":\"message\",\"message_id\":\"m\",\"answer\":{}}}\n\n",
                serde_json::to_string(text).unwrap()
            )
        };
        let stream = format!(
            "{}{}data: {{\"event\":\"message_end\",\"message_id\":\"m\",\"metadata\":{{}}}}\n\n",
            message(&answer[..cut]),
            message(&answer[cut..])
        );
        let mut tr = Translator::new(DifyApp::Chat, reasoning, None, "d", String::new());
        let mut p = SseParser::default();
        let mut events = Vec::new();
        p.push(stream.as_bytes(), &mut events).unwrap();
        let mut outs = Vec::new();
        for ev in &events {
            tr.on_event(ev, &mut outs);
        }
        assert!(matches!(outs.last(), Some(Out::Finish { .. })), "{outs:?}");
        let (mut thought, mut text) = (String::new(), String::new());
        for o in outs {
            match o {
                Out::Reasoning(t) => thought.push_str(&t),
                Out::Text(t) => text.push_str(&t),
                _ => {}
            }
        }
        (thought, text)
    }

    #[test]
    fn a_leading_think_is_split_off_wherever_the_events_cut_it() {
        let answer = "<think>\n比较 9.11 和 9.8。\n</think>\n\n9.8 is larger.";
        for cut in (0..=answer.len()).filter(|&i| answer.is_char_boundary(i)) {
            assert_eq!(
                think_split_at(answer, cut, true),
                (
                    "\n比较 9.11 和 9.8。\n".to_owned(),
                    "9.8 is larger.".to_owned()
                ),
                "cut at {cut}"
            );
            assert_eq!(
                think_split_at(answer, cut, false),
                (String::new(), answer.to_owned()),
                "cut at {cut}: without `reasoning` the tags stay"
            );
        }
        let later = "Answer first. <think>not a preamble</think>";
        for cut in (0..=later.len()).filter(|&i| later.is_char_boundary(i)) {
            assert_eq!(
                think_split_at(later, cut, true),
                (String::new(), later.to_owned())
            );
        }
    }

    #[test]
    fn workflow_text_chunks_and_outputs() {
        let out = same_at_every_split(DifyApp::Workflow, false, Some("plan"), WORKFLOW);
        assert_eq!(
            out,
            r#"[Text("为了"), Text("美丽"), Finish { reason: "stop", usage: Usage { prompt_tokens: 42, completion_tokens: 0, total_tokens: 42, cached_tokens: 0, reasoning_tokens: 0 } }]"#
        );
        let (_, tr) = run(DifyApp::Workflow, false, None, &[WORKFLOW.as_bytes()]);
        assert_eq!(tr.id.as_deref(), Some("chatcmpl-r-1"));
        // Without text chunks the answer comes from the outputs.
        let no_chunks = "data: {\"event\":\"workflow_finished\",\"workflow_run_id\":\"r-2\",\"data\":{\"status\":\"succeeded\",\"outputs\":{\"a\":1,\"b\":\"only string\"}}}\n\n";
        let (out, _) = run(DifyApp::Workflow, false, None, &[no_chunks.as_bytes()]);
        assert!(out.starts_with(r#"[Text("only string"), Finish"#), "{out}");
        let (out, _) = run(DifyApp::Workflow, false, Some("a"), &[no_chunks.as_bytes()]);
        assert!(out.starts_with(r#"[Text("1"), Finish"#), "{out}");
        let json_only = "data: {\"event\":\"workflow_finished\",\"workflow_run_id\":\"r-3\",\"data\":{\"status\":\"succeeded\",\"outputs\":{\"a\":1,\"b\":2}}}\n\n";
        let (out, _) = run(DifyApp::Workflow, false, None, &[json_only.as_bytes()]);
        assert!(out.contains(r#"Text("{\"a\":1,\"b\":2}")"#), "{out}");
    }

    #[test]
    fn failures_replacements_and_errors() {
        let failed = "data: {\"event\":\"workflow_finished\",\"workflow_run_id\":\"r\",\"data\":{\"status\":\"failed\",\"error\":\"node 3 exploded\",\"outputs\":null}}\n\n";
        let (out, tr) = run(DifyApp::Workflow, false, None, &[failed.as_bytes()]);
        assert!(
            out.starts_with("[Error(UpstreamError(") && out.contains("node 3 exploded"),
            "{out}"
        );
        assert!(tr.finished);
        let replaced = "data: {\"event\":\"message\",\"message_id\":\"m\",\"answer\":\"bad\"}\n\ndata: {\"event\":\"message_replace\",\"message_id\":\"m\",\"answer\":\"[removed]\"}\n\ndata: {\"event\":\"message_end\",\"message_id\":\"m\",\"metadata\":{}}\n\n";
        let (out, tr) = run(DifyApp::Chat, false, None, &[replaced.as_bytes()]);
        assert!(out.contains(r#"reason: "content_filter""#), "{out}");
        assert!(
            out.contains("total_tokens: 0"),
            "usage integers are present even when Dify sends none"
        );
        assert_eq!(tr.replaced(), Some("[removed]"));
        let err = "data: {\"event\":\"error\",\"message_id\":\"m\",\"status\":400,\"code\":\"completion_request_error\",\"message\":\"[openai] upstream 500\"}\n\n";
        let (out, _) = run(DifyApp::Chat, false, None, &[err.as_bytes()]);
        assert!(out.starts_with("[Error(Mapped"), "{out}");
        // Chatflow finishes at message_end, not at workflow_finished.
        let chatflow = "data: {\"event\":\"message\",\"message_id\":\"m\",\"answer\":\"a\"}\n\ndata: {\"event\":\"workflow_finished\",\"message_id\":\"m\",\"data\":{\"status\":\"succeeded\",\"outputs\":{\"answer\":\"a\"}}}\n\ndata: {\"event\":\"message_end\",\"message_id\":\"m\",\"metadata\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}}\n\n";
        let (out, _) = run(DifyApp::Chatflow, false, None, &[chatflow.as_bytes()]);
        assert_eq!(out.matches("Finish").count(), 1);
        assert!(out.contains("total_tokens: 2"), "{out}");
        // Nothing after the terminal event counts.
        let after = format!(
            "{CHAT}data: {{\"event\":\"message\",\"message_id\":\"m-1\",\"answer\":\"late\"}}\n\n"
        );
        let (out, _) = run(DifyApp::Chat, false, None, &[after.as_bytes()]);
        assert!(!out.contains("late"));
    }
}
