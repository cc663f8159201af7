"""The official openai SDK against Dify-backed scenarios, one per app mode.

Prints one `RESULT {json}` line per (mode, stream) with what the client saw, for tests/dify.rs
to compare with what the mock Dify produced. `--expect-stream-error` instead checks that a
mid-stream Dify error surfaces as openai.APIError.
"""

import argparse
import json
import sys
import urllib.request

import openai
from openai import OpenAI

MODES = ["chat", "agent", "chatflow", "workflow", "completion"]
QUESTION = "推荐一个补水方案"


def raw_stream_done(base, model):
    req = urllib.request.Request(
        base + "/chat/completions",
        data=json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.read().decode().rstrip().endswith("data: [DONE]")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--expect-stream-error", action="store_true")
    a = ap.parse_args()
    client = OpenAI(base_url=a.gateway, api_key="unused", max_retries=0, timeout=20)
    messages = [{"role": "user", "content": QUESTION}]
    profile = {"metadata": {"user_profile": {"skin_type": "dry"}}}

    if a.expect_stream_error:
        try:
            for _ in client.chat.completions.create(model="chat", messages=messages, stream=True):
                pass
            print("FAIL: the stream ended without an error")
            sys.exit(1)
        except openai.APIError as e:
            print(f"ok: mid-stream error raised openai.APIError ({type(e).__name__}: {e.message[:80]})")
        return

    for mode in MODES:
        r = client.chat.completions.create(model=mode, messages=messages, extra_body=profile)
        msg = r.choices[0].message
        print("RESULT " + json.dumps({
            "mode": mode, "stream": False, "text": msg.content, "model": r.model,
            "usage": {"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens, "total_tokens": r.usage.total_tokens},
            "reasoning": getattr(msg, "reasoning_content", None) or (msg.model_extra or {}).get("reasoning_content"),
            "finish": r.choices[0].finish_reason,
        }, ensure_ascii=False), flush=True)

        ids, text, reasoning, usage, model, finish = set(), "", "", None, None, None
        for c in client.chat.completions.create(model=mode, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=profile):
            ids.add(c.id)
            model = c.model
            if c.usage:
                usage = {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens, "total_tokens": c.usage.total_tokens}
            for ch in c.choices:
                text += ch.delta.content or ""
                reasoning += (ch.delta.model_extra or {}).get("reasoning_content") or ""
                finish = ch.finish_reason or finish
        print("RESULT " + json.dumps({
            "mode": mode, "stream": True, "text": text, "ids": sorted(ids), "usage": usage, "model": model,
            "reasoning": reasoning or None, "finish": finish, "done": raw_stream_done(a.gateway, mode),
        }, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
