//! The request mapping, rule by rule.

use super::*;
use crate::config::Config;
use crate::protocol::{Feature, RequestHints};
use serde_json::json;
use std::path::Path;

fn config(target: &str) -> Config {
    let yaml = format!(
        r#"
providers:
  c: {{ type: anthropic, base_url: "https://api.anthropic.com/v1", api_key: k }}
scenarios:
  s:
    targets:
      - {{ provider: c, {target} }}
"#
    );
    Config::from_str_at(&yaml, Path::new("t.yaml")).unwrap()
}

fn parse(body: Value) -> ChatRequest {
    ChatRequest::parse(body.to_string().as_bytes(), &RequestHints::default()).unwrap()
}

fn try_body_on(
    target: &str,
    system: Option<&str>,
    drop: Features,
    req: Value,
) -> Result<Value, GatewayError> {
    let cfg = config(target);
    let req = parse(req);
    let body = build_body(&cfg.scenarios[0].targets[0], &req, system, drop)?;
    Ok(serde_json::from_slice(&body).expect("the body is JSON"))
}

fn body(req: Value) -> Value {
    try_body_on("model: claude-sonnet-4-5", None, Features::NONE, req).unwrap()
}

fn error(req: Value) -> GatewayError {
    try_body_on("model: claude-sonnet-4-5", None, Features::NONE, req).unwrap_err()
}

fn param(e: &GatewayError) -> Value {
    e.to_json()["error"]["param"].clone()
}

#[test]
fn a_plain_request_maps_model_limits_and_sampling() {
    let v = body(json!({
        "model": "s", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0.5, "top_p": 0.9, "stop": "END", "user": "u-1",
        "max_completion_tokens": 300, "top_k": 5,
        "n": 1, "logprobs": false, "frequency_penalty": 0, "seed": 7,
    }));
    assert_eq!(
        v,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
            "stream": true,
            "top_k": 5,
        })
    );
}

#[test]
fn max_tokens_comes_from_the_client_then_the_target_then_4096() {
    let ask = |extra: Value, target: &str| -> Value {
        let mut req = json!({"messages": [{"role": "user", "content": "q"}]});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        try_body_on(target, None, Features::NONE, req).unwrap()["max_tokens"].clone()
    };
    let with_params =
        "model: m, params: { max_tokens: 1000, thinking: { type: enabled, budget_tokens: 512 } }";
    assert_eq!(ask(json!({}), "model: m"), 4096);
    assert_eq!(ask(json!({}), with_params), 1000);
    assert_eq!(ask(json!({"max_tokens": 50}), with_params), 50);
    assert_eq!(
        ask(
            json!({"max_tokens": 50, "max_completion_tokens": 60}),
            "model: m"
        ),
        60
    );
    let v = try_body_on(
        with_params,
        None,
        Features::NONE,
        json!({"messages": [{"role": "user", "content": "q"}]}),
    )
    .unwrap();
    assert_eq!(
        v["thinking"],
        json!({"type": "enabled", "budget_tokens": 512}),
        "target params Anthropic knows pass as they are"
    );
    let e = error(json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": -1}));
    assert_eq!(param(&e), "max_tokens");
}

#[test]
fn the_model_is_the_targets_else_the_clients() {
    let req = json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "q"}]});
    let v = try_body_on("weight: 1", None, Features::NONE, req).unwrap();
    assert_eq!(v["model"], "claude-haiku-4-5");
    let e = try_body_on(
        "weight: 1",
        None,
        Features::NONE,
        json!({"messages": [{"role": "user", "content": "q"}]}),
    )
    .unwrap_err();
    assert_eq!((e.status(), param(&e)), (400, json!("model")));
}

#[test]
fn every_system_and_developer_message_joins_the_system_text() {
    let req = json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "system", "content": ""},
        {"role": "user", "content": "q2"},
    ]});
    let v = body(req.clone());
    assert_eq!(v["system"], "Be brief.\n\nAnswer in French.");
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "text", "text": "q2"}]}]),
        "the user turns around a system message are merged"
    );
    let on = |mode: &str| {
        try_body_on(
            &format!("model: m, system_prompt: \"Gateway.\", system_prompt_mode: {mode}"),
            Some("Gateway."),
            Features::NONE,
            req.clone(),
        )
        .unwrap()["system"]
            .clone()
    };
    assert_eq!(on("prepend"), "Gateway.\n\nBe brief.\n\nAnswer in French.");
    assert_eq!(on("merge"), "Gateway.\n\nBe brief.\n\nAnswer in French.");
    assert_eq!(on("replace"), "Gateway.");
    let none = body(json!({"messages": [{"role": "user", "content": "q"}]}));
    assert!(none.get("system").is_none(), "{none}");
}

#[test]
fn empty_assistant_turns_are_dropped_and_roles_alternate() {
    let v = body(json!({"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": null},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
    ]}));
    assert_eq!(
        v["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
        ])
    );
    let e = error(json!({"messages": [{"role": "system", "content": "only"}]}));
    assert_eq!(param(&e), "messages");
}

const CALLS: &str = r#"[
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
    {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}
]"#;

#[test]
fn tool_calls_and_consecutive_results_become_tool_use_and_one_user_turn() {
    let calls: Value = serde_json::from_str(CALLS).unwrap();
    let v = body(json!({"messages": [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ]}));
    assert_eq!(
        v["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather and time?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"temp_c\":21}"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"},
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ]},
        ])
    );
    // Legacy function calling maps the same way, with ids made up per call.
    let v = body(json!({"messages": [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": null, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ], "functions": [{"name": "get_weather"}], "function_call": "auto"}));
    assert_eq!(v["messages"][1]["content"][0]["id"], "call_1");
    assert_eq!(v["messages"][2]["content"][0]["tool_use_id"], "call_1");
    assert_eq!(
        v["tools"],
        json!([{"name": "get_weather", "input_schema": {"type": "object"}}])
    );
    assert_eq!(v["tool_choice"], json!({"type": "auto"}));
}

#[test]
fn unparsable_arguments_are_a_400_naming_the_message() {
    for args in ["{\"city\": \"Par", "", "[1]"] {
        let e = error(json!({"messages": [
            {"role": "user", "content": "w?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]},
        ]}));
        assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{args}");
        assert_eq!(param(&e), "messages[1]");
        assert!(e.to_string().contains("c1"), "{e}");
    }
    let e = error(json!({"messages": [{"role": "tool", "content": "r"}]}));
    assert_eq!(param(&e), "messages[0].tool_call_id");
}

#[test]
fn tools_map_and_long_names_are_refused() {
    let v = body(
        json!({"messages": [{"role": "user", "content": "q"}], "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ]}),
    );
    assert_eq!(
        v["tools"],
        json!([
            {"name": "get_weather", "description": "Weather by city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "now", "input_schema": {"type": "object"}},
        ])
    );
    assert!(v.get("tool_choice").is_none());
    let long = "f".repeat(65);
    let e = error(json!({"messages": [{"role": "user", "content": "q"}],
        "tools": [{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": {"name": long}}]}));
    assert_eq!(param(&e), "tools[1].function.name");
    assert!(e.to_string().contains("at most 64"), "{e}");
    let fine = "f".repeat(64);
    let v = body(json!({"messages": [{"role": "user", "content": "q"}],
        "tools": [{"type": "function", "function": {"name": fine}}]}));
    assert_eq!(v["tools"][0]["name"], fine);
    let e = error(json!({"messages": [{"role": "user", "content": "q"}],
        "tools": [{"type": "custom", "custom": {"name": "x"}}]}));
    assert_eq!(param(&e), "tools[0]");
}

#[test]
fn tool_choice_variants_and_parallel_calls() {
    let choice = |tc: Value, parallel: Option<bool>| -> Value {
        let mut req = json!({"messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        if !tc.is_null() {
            req["tool_choice"] = tc;
        }
        if let Some(p) = parallel {
            req["parallel_tool_calls"] = json!(p);
        }
        body(req).get("tool_choice").cloned().unwrap_or(Value::Null)
    };
    assert_eq!(choice(json!("auto"), None), json!({"type": "auto"}));
    assert_eq!(choice(json!("required"), None), json!({"type": "any"}));
    assert_eq!(choice(json!("none"), None), json!({"type": "none"}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "f"}}), None),
        json!({"type": "tool", "name": "f"})
    );
    assert_eq!(
        choice(json!("required"), Some(false)),
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        choice(Value::Null, Some(false)),
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(choice(Value::Null, Some(true)), Value::Null);
    assert_eq!(choice(json!("none"), Some(false)), json!({"type": "none"}));
    let e = error(json!({"messages": [{"role": "user", "content": "q"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}));
    assert_eq!(param(&e), "tool_choice");
}

#[test]
fn images_by_data_url_and_by_http_url() {
    let v = body(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]}));
    assert_eq!(
        v["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
    for url in ["ftp://x/y.png", "data:image/png,raw"] {
        let e = error(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]}));
        assert_eq!(param(&e), "messages[0].content[0].image_url", "{url}");
    }
    let e = error(json!({"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "f"}}]}]}));
    assert_eq!(param(&e), "messages[0].content[0]");
}

#[test]
fn dropped_features_and_reserved_names() {
    let mut drop = Features::NONE;
    drop.insert(Feature::Tools);
    let v = try_body_on(
        "model: m",
        None,
        drop,
        json!({"messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}),
    )
    .unwrap();
    assert!(
        v.get("tools").is_none() && v.get("tool_choice").is_none(),
        "{v}"
    );
    let e = error(json!({"messages": [{"role": "user", "content": "q"}], "system": "x"}));
    assert_eq!(param(&e), "system");
    let v = body(
        json!({"messages": [{"role": "user", "content": "q"}], "stop": ["a", "b"], "temperature": null}),
    );
    assert_eq!(v["stop_sequences"], json!(["a", "b"]));
    assert!(v.get("temperature").is_none());
}
