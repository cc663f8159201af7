"""Drives the gateway with the official openai Python SDK, as a business service would.

Run by tests/sdk.rs against a gateway and a mock upstream it started; exits non-zero with a
message on the first expectation that does not hold. Each check prints one line.
"""

import argparse
import json
import sys
import urllib.request

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--direct", required=True, help="mock upstream base URL")
    ap.add_argument("--key", required=True, help="client key for the gateway")
    ap.add_argument("--model", required=True, help="scenario alias the gateway serves")
    ap.add_argument("--upstream-model", required=True, help="model the target sends upstream")
    ap.add_argument("--max-body", type=int, required=True)
    a = ap.parse_args()

    gw = OpenAI(base_url=a.gateway, api_key=a.key, max_retries=0, timeout=20)
    direct = OpenAI(base_url=a.direct, api_key="unused", max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "推荐一个适合油性皮肤的护理方案"}]

    # Non-stream: the same completion as the upstream gives directly.
    via = gw.chat.completions.create(model=a.model, messages=messages)
    ref = direct.chat.completions.create(model=a.upstream_model, messages=messages)
    check(via.model_dump() == ref.model_dump(), "non-stream answer equals the direct answer")
    check(via.choices[0].message.content, "non-stream answer has content")

    # Stream with usage: same chunks, usage chunk last.
    opts = {"include_usage": True}
    via_chunks = [c.model_dump() for c in gw.chat.completions.create(model=a.model, messages=messages, stream=True, stream_options=opts)]
    ref_chunks = [c.model_dump() for c in direct.chat.completions.create(model=a.upstream_model, messages=messages, stream=True, stream_options=opts)]
    check(via_chunks == ref_chunks, f"stream chunks equal the direct stream ({len(via_chunks)} chunks)")
    check(len(via_chunks) >= 3, "stream has several chunks")
    check(via_chunks[-1]["usage"] is not None and via_chunks[-1]["usage"]["total_tokens"] > 0, "usage chunk present")
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in via_chunks if c["choices"])
    check(text == ref.choices[0].message.content, "streamed text equals the non-stream text")

    # The raw stream ends with [DONE] (the SDK hides it, so look at the wire).
    req = urllib.request.Request(
        a.gateway + "/chat/completions",
        data=json.dumps({"model": a.model, "messages": messages, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {a.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as raw:
        body = raw.read().decode()
        check(raw.status == 200 and body.rstrip().endswith("data: [DONE]"), "raw stream ends with data: [DONE]")

    # Errors surface as the SDK's exception classes with the gateway's codes.
    try:
        gw.post("/chat/completions", body=b"{not json", cast_to=object,
                options={"headers": {"Content-Type": "application/json"}})
        check(False, "invalid JSON is rejected")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.code == "invalid_json", f"invalid JSON -> BadRequestError invalid_json ({e.code})")

    try:
        gw.chat.completions.create(model="no-such-model", messages=messages)
        check(False, "unknown model is rejected")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", f"unknown model -> NotFoundError model_not_found ({e.code})")

    try:
        OpenAI(base_url=a.gateway, api_key="wrong-key", max_retries=0).chat.completions.create(model=a.model, messages=messages)
        check(False, "wrong key is rejected")
    except openai.AuthenticationError as e:
        check(e.code == "invalid_api_key", f"wrong key -> AuthenticationError invalid_api_key ({e.code})")

    big = [{"role": "user", "content": "x" * (a.max_body + 1024)}]
    try:
        gw.chat.completions.create(model=a.model, messages=big)
        check(False, "oversized body is rejected")
    except openai.APIStatusError as e:
        check(e.status_code == 413 and e.code == "request_too_large", f"oversized body -> 413 request_too_large ({e.code})")

    print("sdk checks passed", flush=True)


if __name__ == "__main__":
    main()
