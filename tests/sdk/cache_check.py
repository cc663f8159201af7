"""The response cache seen through the official openai SDK: hits carry `x-gateway-cache: hit`
and equal the first answer, across stream and non-stream."""

import argparse
import sys

from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def completion(client, q):
    raw = client.chat.completions.with_raw_response.create(model="cached", messages=[{"role": "user", "content": q}])
    r = raw.parse()
    return raw.headers.get("x-gateway-cache"), r.choices[0].message.content, r.usage.model_dump()


def stream(client, q):
    raw = client.chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": q}], stream=True, stream_options={"include_usage": True})
    text, usage, chunks = "", None, 0
    for c in raw.parse():
        for ch in c.choices:
            if ch.delta.content:
                text += ch.delta.content
                chunks += 1
        if c.usage:
            usage = c.usage.model_dump()
    return raw.headers.get("x-gateway-cache"), text, usage, chunks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    client = OpenAI(base_url=a.gateway, api_key=a.key, max_retries=0)

    miss = completion(client, "sdk one")
    hit = completion(client, "sdk one")
    check(miss[0] == "miss" and hit[0] == "hit", f"second identical request is a hit ({miss[0]}, {hit[0]})")
    check(miss[1:] == hit[1:], "text and usage equal the first answer")
    s = stream(client, "sdk one")
    check(s[0] == "hit" and s[1] == miss[1] and s[2] == miss[2], "a non-stream miss replays as a stream hit")
    check(s[3] >= 3, f"replayed stream has several content chunks ({s[3]})")

    s_miss = stream(client, "sdk two")
    n_hit = completion(client, "sdk two")
    check(s_miss[0] == "miss" and n_hit[0] == "hit", "a streamed miss serves a non-stream hit")
    check(n_hit[1] == s_miss[1] and n_hit[2] == s_miss[2], "same text and usage")
    print("cache sdk checks passed", flush=True)


if __name__ == "__main__":
    main()
