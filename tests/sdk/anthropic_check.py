"""The official anthropic SDK, unmodified, against the gateway's /v1/messages: create and
stream on OpenAI-compatible, Anthropic and Dify targets, tool use and a tool round trip, an
image block, system as a string and as blocks, and errors as the SDK's exception types."""

import argparse
import base64
import sys

import anthropic


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    args = ap.parse_args()
    client = anthropic.Anthropic(base_url=args.gateway, api_key="client-key", max_retries=0)
    hello = [{"role": "user", "content": "Hello there"}]

    for model in ["via_openai", "via_claude", "via_dify"]:
        m = client.messages.create(model=model, max_tokens=100, messages=hello)
        check(m.type == "message" and m.role == "assistant", f"{model}: a message")
        check(m.content[0].type == "text" and m.content[0].text, f"{model}: text block")
        check(m.stop_reason == "end_turn", f"{model}: end_turn ({m.stop_reason})")
        check(m.usage.output_tokens > 0, f"{model}: usage")

        with client.messages.stream(model=model, max_tokens=100, messages=hello) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        check(text and final.content[0].text == text, f"{model}: streamed text equals the final message")
        check(final.stop_reason == "end_turn", f"{model}: streamed stop_reason")
        check(final.usage.output_tokens > 0, f"{model}: streamed usage")

    system = client.messages.create(
        model="via_openai", max_tokens=50, messages=hello, system="Be brief."
    )
    check(system.content[0].text, "system as a string")
    blocks = client.messages.create(
        model="via_openai",
        max_tokens=50,
        messages=hello,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
    )
    check(blocks.content[0].text, "system as blocks")

    tool = client.messages.create(
        model="via_openai", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    check(tool.stop_reason == "tool_use", f"tool use stop reason ({tool.stop_reason})")
    use = [b for b in tool.content if b.type == "tool_use"][0]
    check(use.name == "get_weather" and use.input == {"city": "Paris"}, "tool_use block with parsed input")

    with client.messages.stream(
        model="via_openai", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
    ) as s:
        final = s.get_final_message()
    streamed_use = [b for b in final.content if b.type == "tool_use"]
    check(streamed_use and streamed_use[0].input == {"city": "Paris"}, "streamed tool use")

    round_trip = client.messages.create(
        model="via_claude",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]},
        ],
    )
    check(round_trip.content[0].text, "tool round trip answered")

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
    image = client.messages.create(
        model="via_openai",
        max_tokens=50,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "What is this?"},
        ]}],
    )
    check(image.content[0].text, "image block accepted")

    bad = anthropic.Anthropic(base_url=args.gateway, api_key="wrong", max_retries=0)
    try:
        bad.messages.create(model="via_openai", max_tokens=10, messages=hello)
        check(False, "a wrong key raises")
    except anthropic.AuthenticationError as e:
        check(e.status_code == 401, "AuthenticationError")
    try:
        client.messages.create(model="no-such-model", max_tokens=10, messages=hello)
        check(False, "an unknown model raises")
    except anthropic.NotFoundError as e:
        check(e.status_code == 404, "NotFoundError")
    try:
        client.messages.create(
            model="via_openai",
            max_tokens=10,
            messages=[{"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"}}
            ]}],
        )
        check(False, "a PDF document raises")
    except anthropic.BadRequestError as e:
        check(e.status_code == 400 and "document" in str(e), "BadRequestError naming the document block")

    n = client.messages.count_tokens(model="via_openai", messages=hello)
    check(n.input_tokens > 0, "count_tokens")
    print("ALL OK")


if __name__ == "__main__":
    main()
