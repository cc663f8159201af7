"""LangChain's ChatOpenAI and the openai SDK against the gateway: tools on a Dify-only scenario
are refused as a BadRequestError naming the parameter; on a Dify-then-OpenAI scenario the tool
call comes from the OpenAI target, and the gateway says which provider answered."""

import argparse
import sys

import openai
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


@tool
def get_weather(city: str) -> str:
    """Weather of a city."""
    return "sunny"


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    args = ap.parse_args()

    def llm(model):
        return ChatOpenAI(
            model=model,
            base_url=args.gateway,
            api_key="unused",
            max_retries=0,
            include_response_headers=True,
        )

    try:
        llm("dify_only").bind_tools([get_weather], tool_choice="required").invoke(
            "Weather in Paris?"
        )
        check(False, "bind_tools on a Dify-only scenario raises")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "refused with 400")
        check(e.code == "unsupported_parameter", f"code unsupported_parameter ({e.code})")
        check(e.param == "tools", f"param names tools ({e.param})")

    msg = llm("dify_then_openai").bind_tools([get_weather]).invoke("Weather in Paris?")
    check(len(msg.tool_calls) == 1, f"one tool call ({msg.tool_calls})")
    check(msg.tool_calls[0]["name"] == "get_weather", "the tool is get_weather")
    check(msg.tool_calls[0]["args"] == {"city": "Paris"}, "its arguments")
    headers = msg.response_metadata.get("headers", {})
    check(headers.get("x-gateway-provider") == "gpt", f"answered by gpt ({headers.get('x-gateway-provider')})")

    chunks = list(llm("dify_then_openai").bind_tools([get_weather]).stream("Weather in Paris?"))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    check(merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather", "streamed tool call")

    client = openai.OpenAI(base_url=args.gateway, api_key="unused", max_retries=0)
    try:
        client.chat.completions.create(
            model="dify_only",
            messages=[{"role": "user", "content": "hi"}],
            n=2,
        )
        check(False, "n=2 on a Dify-only scenario raises")
    except openai.BadRequestError as e:
        check(e.code == "unsupported_parameter" and e.param == "n", "n=2 refused naming n")
    print("ALL OK")


if __name__ == "__main__":
    main()
