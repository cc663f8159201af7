"""The official openai and anthropic SDKs, unmodified, on validated (structured output)
scenarios: the openai SDK's `parse` helper with a Pydantic model (a json_schema response_format
checked by the gateway), a scenario's own schema read through both SDKs, a stream, and the
`invalid_output` error as the SDK's exception type."""

import argparse
import json
import sys

import anthropic
import openai
from pydantic import BaseModel


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


class Place(BaseModel):
    city: str


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=f"{args.gateway}/v1", api_key="client-key", max_retries=0)

    # The client's own schema, from a Pydantic model; the first answer is repaired.
    raw = client.chat.completions.with_raw_response.parse(
        model="plain",
        messages=[{"role": "user", "content": "Where is the clinic?"}],
        response_format=Place,
    )
    done = raw.parse()
    check(done.choices[0].message.parsed == Place(city="Paris"), "parse() gets a Place")
    check(raw.headers.get("x-gateway-output") == "repaired", "x-gateway-output: repaired")

    # The scenario's schema, no response_format from the client.
    done = client.chat.completions.create(
        model="sentiment", messages=[{"role": "user", "content": "Lovely staff"}]
    )
    value = json.loads(done.choices[0].message.content)
    check(set(value) == {"label", "score"}, "the scenario's schema holds")

    stream = client.chat.completions.create(
        model="sentiment",
        messages=[{"role": "user", "content": "Lovely staff"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    check(json.loads(text)["label"] == "positive", "a validated stream")
    check(usage is not None and usage.prompt_tokens > 0, "the stream's usage")

    claude = anthropic.Anthropic(base_url=args.gateway, api_key="client-key", max_retries=0)
    message = claude.messages.create(
        model="sentiment", max_tokens=200, messages=[{"role": "user", "content": "Lovely staff"}]
    )
    check(json.loads(message.content[0].text)["score"] == 0.8, "anthropic SDK: validated JSON")

    try:
        client.chat.completions.create(
            model="never_valid", messages=[{"role": "user", "content": "x"}]
        )
        check(False, "invalid output raises")
    except openai.APIStatusError as e:
        check(e.status_code == 502, "invalid_output is a 502")
        check(e.body["code"] == "invalid_output", "code invalid_output")
    print("structured sdk checks passed")


if __name__ == "__main__":
    main()
