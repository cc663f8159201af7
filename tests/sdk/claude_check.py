"""Drives a Claude target (`type: anthropic`) through the gateway with the official openai SDK.

Run by tests/anthropic_upstream.rs against a gateway and two mock Anthropic upstreams it
started: `--model` answers with `--text`, `--tools-model` answers with one `get_weather` tool
call. Exits non-zero with a message on the first expectation that does not hold. Each check
prints one line.
"""

import argparse
import json
import sys

from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}]
ARGUMENTS = {"city": "Paris", "unit": "celsius"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--key", required=True, help="client key for the gateway")
    ap.add_argument("--model", required=True, help="scenario whose Claude target answers text")
    ap.add_argument("--tools-model", required=True, help="scenario whose Claude target calls a tool")
    ap.add_argument("--text", required=True, help="the text the Claude mock answers")
    a = ap.parse_args()

    gw = OpenAI(base_url=a.gateway, api_key=a.key, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "Which cream suits dry skin in winter?"}]

    # Non-stream: one chat.completion with the text and usage in OpenAI terms.
    r = gw.chat.completions.create(model=a.model, messages=messages)
    check(r.object == "chat.completion", f"non-stream object ({r.object})")
    check(r.id.startswith("chatcmpl-"), f"non-stream id ({r.id})")
    check(r.model == a.model, f"non-stream model is the one asked for ({r.model})")
    check(len(r.choices) == 1, "one choice")
    check(r.choices[0].message.role == "assistant", "assistant message")
    check(r.choices[0].message.content == a.text, f"non-stream text ({r.choices[0].message.content!r})")
    check(r.choices[0].finish_reason == "stop", f"non-stream finish_reason ({r.choices[0].finish_reason})")
    check(not r.choices[0].message.tool_calls, "no tool calls")
    u = r.usage
    check(u is not None and u.prompt_tokens == 30 and u.completion_tokens == 15 and u.total_tokens == 45,
          f"non-stream usage: input + cache read, output ({u})")
    check(u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 10,
          f"non-stream cached tokens ({u.prompt_tokens_details})")

    # Stream with include_usage: one id, the whole text, finish stop, usage chunk last.
    chunks = list(gw.chat.completions.create(
        model=a.model, messages=messages, stream=True, stream_options={"include_usage": True}))
    check(len(chunks) >= 3, f"stream has several chunks ({len(chunks)})")
    check(all(c.object == "chat.completion.chunk" for c in chunks), "stream chunk objects")
    check(len({c.id for c in chunks}) == 1, "one id for the whole stream")
    check(chunks[0].choices and chunks[0].choices[0].delta.role == "assistant", "first chunk has the role")
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    check(text == a.text, f"streamed text ({text!r})")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"], f"stream finish_reason ({finishes})")
    last = chunks[-1]
    check(last.choices == [] and last.usage is not None, "usage chunk last, without choices")
    check(last.usage.prompt_tokens == 30 and last.usage.completion_tokens == 15 and last.usage.total_tokens == 45,
          f"stream usage ({last.usage})")
    check(all(c.usage is None for c in chunks[:-1]), "usage only in the last chunk")

    # Tool call, non-stream: whole call, arguments a JSON string, finish tool_calls.
    tool_messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = gw.chat.completions.create(model=a.tools_model, messages=tool_messages, tools=TOOLS)
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls", f"tool call finish_reason ({r.choices[0].finish_reason})")
    check(m.content is None, f"tool call without text has content None ({m.content!r})")
    check(m.tool_calls is not None and len(m.tool_calls) == 1, "one tool call")
    call = m.tool_calls[0]
    check(call.type == "function" and call.function.name == "get_weather", f"tool call name ({call})")
    check(bool(call.id), "tool call id")
    check(json.loads(call.function.arguments) == ARGUMENTS, f"tool call arguments ({call.function.arguments!r})")

    # Tool call, stream: pieces at index 0, id and name on the first, arguments joined.
    chunks = list(gw.chat.completions.create(
        model=a.tools_model, messages=tool_messages, tools=TOOLS, stream=True,
        stream_options={"include_usage": True}))
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    check(len(pieces) >= 2, f"streamed tool call in pieces ({len(pieces)})")
    check(all(p.index == 0 for p in pieces), "every piece at index 0")
    check(pieces[0].id == call.id and pieces[0].function.name == "get_weather", "id and name on the first piece")
    check(all(p.id is None and (p.function is None or p.function.name is None) for p in pieces[1:]),
          "no id or name after the first piece")
    arguments = "".join((p.function.arguments or "") for p in pieces if p.function)
    check(json.loads(arguments) == ARGUMENTS, f"streamed arguments ({arguments!r})")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["tool_calls"], f"stream tool call finish_reason ({finishes})")
    check(chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0, "stream tool call usage")

    # The SDK's own accumulation of a streamed call (the helper many applications use).
    with gw.chat.completions.stream(model=a.tools_model, messages=tool_messages, tools=TOOLS) as s:
        final = s.get_final_completion()
    fm = final.choices[0].message
    check(fm.tool_calls and json.loads(fm.tool_calls[0].function.arguments) == ARGUMENTS,
          "stream helper assembles the tool call")

    print("claude sdk checks passed", flush=True)


if __name__ == "__main__":
    main()
