"""The official openai SDK, unmodified, against the gateway's /v1/responses: create and stream
(with the SDK's stream helper) on OpenAI-compatible, Dify and Anthropic targets, a function call
round trip through function_call_output, text.format json_schema, previous_response_id,
retrieve and delete, a Codex-shaped request, and errors as the SDK's exception types."""

import argparse
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.gateway, api_key="client-key", max_retries=0)

    for model in ["via_openai", "via_dify", "via_claude"]:
        r = client.responses.create(model=model, input="Hello there", instructions="Be brief.")
        check(r.object == "response" and r.id.startswith("resp_"), f"{model}: a response")
        check(r.status == "completed", f"{model}: completed ({r.status})")
        check(r.output_text, f"{model}: output_text")
        check(r.output[-1].type == "message" and r.output[-1].role == "assistant", f"{model}: message item")
        check(r.usage.output_tokens > 0 and r.usage.total_tokens >= r.usage.output_tokens, f"{model}: usage")

        with client.responses.stream(model=model, input="Hello there") as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
        check(deltas and "".join(deltas) == final.output_text, f"{model}: streamed deltas equal the final text")
        check(final.status == "completed" and final.usage.output_tokens > 0, f"{model}: streamed final response")

    # A function call round trip.
    first = client.responses.create(model="via_openai", input="Weather in Paris?", tools=[WEATHER])
    calls = [o for o in first.output if o.type == "function_call"]
    check(len(calls) == 1 and calls[0].name == "get_weather", "a function call item")
    check('"Paris"' in calls[0].arguments, "its arguments")
    second = client.responses.create(
        model="via_openai",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"},
        ],
    )
    check(second.status == "completed", "the round trip completes")

    with client.responses.stream(model="via_openai", input="Weather in Paris?", tools=[WEATHER]) as s:
        arg_deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    streamed_calls = [o for o in final.output if o.type == "function_call"]
    check(streamed_calls and "".join(arg_deltas) == streamed_calls[0].arguments, "streamed function call arguments")

    # Structured output.
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"], "additionalProperties": False}
    structured = client.responses.create(
        model="via_openai",
        input="Sentiment of: great!",
        text={"format": {"type": "json_schema", "name": "sentiment", "schema": schema, "strict": True}},
    )
    check(structured.status == "completed", "text.format json_schema accepted")

    # Continuation: OpenAI target (the history is replayed) and Dify target (its conversation).
    for model in ["via_openai", "via_dify"]:
        one = client.responses.create(model=model, input="My name is Ada.")
        two = client.responses.create(model=model, input="What is my name?", previous_response_id=one.id)
        check(two.previous_response_id == one.id, f"{model}: previous_response_id echoed")
        check(two.status == "completed", f"{model}: continued")
        print(f"chain {model} {one.id} {two.id}")

    # Retrieve and delete.
    got = client.responses.retrieve(one.id)
    check(got.id == one.id and got.output_text == one.output_text, "retrieve a stored response")
    client.responses.delete(one.id)
    try:
        client.responses.retrieve(one.id)
        check(False, "a deleted response is gone")
    except openai.NotFoundError:
        check(True, "a deleted response is gone (404)")

    # A Codex-shaped request: long instructions, store false, full input, include.
    codex = client.responses.create(
        model="via_openai",
        instructions="You are a coding agent. " * 200,
        store=False,
        include=["reasoning.encrypted_content"],
        parallel_tool_calls=False,
        tool_choice="auto",
        tools=[WEATHER],
        reasoning={"effort": "medium", "summary": "auto"},
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
        ],
    )
    check(codex.status == "completed", "a Codex-shaped request")
    try:
        client.responses.retrieve(codex.id)
        check(False, "store=false is not stored")
    except openai.NotFoundError:
        check(True, "store=false is not stored")

    # Errors.
    try:
        client.responses.create(model="via_openai", input="x", previous_response_id="resp_unknown")
        check(False, "unknown previous_response_id refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "previous_response_id", "unknown previous_response_id: 400 naming it")
    try:
        client.responses.create(model="via_openai", input="x", tools=[{"type": "web_search"}])
        check(False, "built-in tool refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "tools[0].type", "built-in tool: 400 naming it")

    print("responses sdk checks passed")


if __name__ == "__main__":
    main()
