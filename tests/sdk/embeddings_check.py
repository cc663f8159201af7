"""/v1/embeddings and /v1/completions through the official openai SDK, unmodified: embeddings of a
string and of a list (the SDK asks for base64 by default and decodes it), explicit float and
base64 formats, and legacy completions streamed and not."""

import argparse
import base64
import struct
import sys

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
    ap.add_argument("--content", required=True)
    a = ap.parse_args()
    client = OpenAI(base_url=a.gateway, api_key=a.key, max_retries=0)

    # A string, with the SDK's default (base64 on the wire, floats for the caller).
    raw = client.embeddings.with_raw_response.create(model="emb", input="hello world")
    one = raw.parse()
    check(raw.headers.get("x-gateway-scenario") == "emb", "the model names the scenario")
    check(len(one.data) == 1 and one.data[0].index == 0, "one vector for a string")
    vec = one.data[0].embedding
    check(len(vec) == 8 and all(isinstance(x, float) for x in vec), f"8 floats ({vec})")
    check(one.usage.prompt_tokens == 2 and one.usage.total_tokens == 2, f"usage ({one.usage})")

    floats = client.embeddings.create(model="emb", input="hello world", encoding_format="float")
    check(floats.data[0].embedding == vec, "float format equals the decoded default")

    many = client.embeddings.create(model="emb", input=["first text", "second", "hello world"],
                                    encoding_format="float", dimensions=4)
    check([d.index for d in many.data] == [0, 1, 2], "one vector per input, in order")
    check(all(len(d.embedding) == 4 for d in many.data), "dimensions reach the upstream")
    check(many.data[0].embedding != many.data[1].embedding, "different texts, different vectors")
    check(many.data[2].embedding == vec[:4], "same text, same vector")

    b64 = client.embeddings.create(model="emb", input="hello world", encoding_format="base64")
    text = b64.data[0].embedding
    check(isinstance(text, str), "base64 asked explicitly stays a string")
    decoded = list(struct.unpack("<8f", base64.b64decode(text)))
    check(decoded == vec, "base64 decodes to the same little-endian f32 vector")

    tokens = client.embeddings.create(model="emb", input=[[1, 2, 3], [4]], encoding_format="float")
    check(len(tokens.data) == 2, "token-id arrays are accepted")

    # Legacy completions.
    done = client.completions.create(model="comp", prompt="Say hello", max_tokens=20)
    check(done.object == "text_completion", "a text_completion object")
    check(done.choices[0].text == a.content, f"non-stream text ({done.choices[0].text!r})")
    check(done.choices[0].finish_reason == "stop", "finish reason")
    check(done.usage.prompt_tokens == 2, f"completion usage ({done.usage})")

    pieces, finish, chunks = "", None, 0
    for c in client.completions.create(model="comp", prompt="Say hello", stream=True):
        for ch in c.choices:
            pieces += ch.text
            finish = ch.finish_reason or finish
            chunks += 1
    check(pieces == a.content, f"streamed text ({pieces!r})")
    check(finish == "stop" and chunks >= 3, f"stream finished over several chunks ({chunks})")
    print("embeddings and completions sdk checks passed", flush=True)


if __name__ == "__main__":
    main()
