"""The official openai SDK, unmodified, against the gateway: a stream without include_usage has
no usage anywhere (as OpenAI sends it), one with it ends with the usage chunk, and reasoning from
a Dify app arrives as reasoning_content."""

import argparse
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.gateway, api_key="key-free", max_retries=0)
    hello = [{"role": "user", "content": "hello there"}]

    chunks = list(client.chat.completions.create(model="s", messages=hello, stream=True))
    check(all(c.usage is None for c in chunks), "no include_usage: no usage on any chunk")
    check(all(c.choices for c in chunks), "no include_usage: no usage chunk")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    check(text == "Hello from the mock upstream, one two three.", f"the whole text ({text!r})")

    chunks = list(client.chat.completions.create(
        model="s", messages=hello, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    check(last.choices == [] and last.usage.total_tokens == 19, "include_usage: the usage chunk last")
    check(all(c.usage is None for c in chunks[:-1]), "include_usage: usage only on the last chunk")

    chunks = list(client.chat.completions.create(model="think", messages=hello, stream=True))
    thought = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(thought == "The user greets; greet back.", f"dify: reasoning_content ({thought!r})")
    check(answer == "chat says: hello there", f"dify: content without the tags ({answer!r})")


if __name__ == "__main__":
    main()
