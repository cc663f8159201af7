"""The official openai SDK on two compatibility points: `models.retrieve` for a scenario name or
alias (unknown ids raise openai.NotFoundError), and a stream whose upstream never sent
`data: [DONE]` after its finish reason, which the SDK must read to the end without an error.

Run by tests/compat.rs; exits non-zero with a message on the first expectation that does not
hold. Each check prints one line.
"""

import argparse
import sys

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--alias", action="append", required=True)
    ap.add_argument("--stream-model", required=True)
    ap.add_argument("--expect-text", required=True)
    a = ap.parse_args()
    client = OpenAI(base_url=a.gateway, api_key=a.key, max_retries=0, timeout=20)

    listed = {m.id: m for m in client.models.list()}
    for id in [a.scenario] + a.alias:
        m = client.models.retrieve(id)
        check(m.id == id and m.object == "model", f"retrieve({id!r}) returns that model")
        check(m.model_dump() == listed[id].model_dump(), f"retrieve({id!r}) equals its list entry")
        check((m.model_extra or {}).get("scenario") == a.scenario, f"retrieve({id!r}) names scenario {a.scenario}")

    try:
        client.models.retrieve("no-such-model")
        check(False, "an unknown model is rejected")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found" and e.type == "invalid_request_error",
              f"unknown model -> NotFoundError model_not_found ({e.code}, {e.type})")
        check("no-such-model" in e.message, "the error names the id")

    try:
        OpenAI(base_url=a.gateway, api_key="wrong-key", max_retries=0).models.retrieve(a.scenario)
        check(False, "a wrong key is rejected")
    except openai.AuthenticationError as e:
        check(e.code == "invalid_api_key", f"wrong key -> AuthenticationError ({e.code})")

    # The upstream behind this model ends its streams without [DONE].
    text, finish, usage, chunks = "", None, None, 0
    stream = client.chat.completions.create(
        model=a.stream_model, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    for c in stream:
        chunks += 1
        for ch in c.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
        if c.usage:
            usage = c.usage
    check(text == a.expect_text, f"the stream carries the whole text ({text!r})")
    check(finish == "stop", f"with its finish reason ({finish})")
    check(usage is not None and usage.completion_tokens > 0, "and its usage chunk")
    check(stream.response.is_closed, f"the stream ended cleanly after {chunks} chunks")
    print("models and stream checks passed", flush=True)


if __name__ == "__main__":
    main()
