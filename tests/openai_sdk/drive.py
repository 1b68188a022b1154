"""Drives ModelRoute's OpenAI-compatible door with the official `openai` SDK,
unchanged: chat (plain and streamed, with usage, with tools), idempotent replays,
images (url and b64_json), models, and errors raised as the SDK's own exception
classes. Run by the e2e test
`openai_door::the_official_openai_python_sdk_works_against_the_door` with
OPENAI_BASE_URL and OPENAI_API_KEY pointing at a live server.

`drive.py retry` instead checks that the SDK's own retry honours the door's
`Retry-After` on a `429`, against a server whose key allows one request a second
(the e2e test `openai_door::the_openai_sdk_retries_a_429_after_its_retry_after`)."""

import base64
import sys
import time
import urllib.request

import openai
from openai import OpenAI

MODEL = "llama-3.1-8b-instruct"
client = OpenAI(max_retries=0)  # base URL and key from the environment
HI = [{"role": "user", "content": "hi"}]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def retry_after():
    """The key's budget is one request a second: the second call at once is a 429
    with Retry-After, which the SDK waits out before its retry succeeds."""
    client.chat.completions.create(model=MODEL, messages=HI)
    try:
        client.chat.completions.create(model=MODEL, messages=HI)
        raise AssertionError("a request over the key's budget was accepted")
    except openai.RateLimitError as error:
        check(error.status_code == 429 and error.code == "RATE_LIMITED", error)
        check(int(error.response.headers["retry-after"]) >= 1, error.response.headers)
    time.sleep(1.2)
    client.chat.completions.create(model=MODEL, messages=HI)
    started = time.monotonic()
    answer = OpenAI(max_retries=2).chat.completions.create(model=MODEL, messages=HI)
    waited = time.monotonic() - started
    check(answer.choices[0].message.content == "Echo: hi", answer)
    check(waited >= 0.9, f"the SDK retried after {waited:.2f} s, before Retry-After")
    print("ok")


if sys.argv[1:] == ["retry"]:
    retry_after()
    sys.exit(0)


# Chat, plain.
completion = client.chat.completions.create(
    model=MODEL,
    messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three"},
    ],
    max_tokens=20,
    user="sdk-user",
)
check(completion.object == "chat.completion", completion)
check(completion.id.startswith("exec_"), completion.id)
check(completion.model == MODEL, completion.model)
check(completion.choices[0].message.content == "Echo: three two one", completion)
check(completion.choices[0].finish_reason == "stop", completion)
check(completion.usage.completion_tokens == 4, completion.usage)
raw = client.chat.completions.with_raw_response.create(
    model=MODEL, messages=[{"role": "user", "content": "hi"}]
)
check(raw.headers.get("x-modelroute-execution-id", "").startswith("exec_"), raw.headers)
check(float(raw.headers["x-modelroute-cost"]) > 0, raw.headers)
check(raw.parse().choices[0].message.content == "Echo: hi", raw.parse())

# Chat, streamed, with the usage chunk.
text = []
usage = None
with client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "alpha beta gamma"}],
    stream=True,
    stream_options={"include_usage": True},
) as stream:
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
check("".join(text) == "Echo: gamma beta alpha", text)
check(usage is not None and usage.total_tokens == 7, usage)

# Chat with tools: the model calls one, plain and streamed.
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
asked = [{"role": "user", "content": "get_weather Paris"}]
called = client.chat.completions.create(model=MODEL, messages=asked, tools=[weather])
check(called.choices[0].finish_reason == "tool_calls", called)
call = called.choices[0].message.tool_calls[0]
check(call.type == "function" and call.function.name == "get_weather", call)
check(call.id.startswith("call_"), call)
arguments = ""
name = None
finish = None
for chunk in client.chat.completions.create(
    model=MODEL, messages=asked, tools=[weather], stream=True
):
    for choice in chunk.choices:
        for fragment in choice.delta.tool_calls or []:
            name = fragment.function.name or name
            arguments += fragment.function.arguments or ""
        finish = choice.finish_reason or finish
check(name == "get_weather" and finish == "tool_calls", (name, finish))
check(arguments == call.function.arguments, (arguments, call.function.arguments))
answered = client.chat.completions.create(
    model=MODEL,
    messages=asked
    + [
        {"role": "assistant", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ],
    tools=[weather],
    tool_choice="none",
)
check(answered.choices[0].message.content == "Echo: thanks", answered)

# Idempotent replays: the same key answers the same completion, marked replayed.
key = {"Idempotency-Key": f"sdk-{time.time_ns()}"}
first = client.chat.completions.with_raw_response.create(
    model=MODEL, messages=HI, extra_headers=key
)
again = client.chat.completions.with_raw_response.create(
    model=MODEL, messages=HI, extra_headers=key
)
check(again.parse().id == first.parse().id, (first.parse().id, again.parse().id))
check(again.headers.get("idempotent-replayed") == "true", again.headers)
check("idempotent-replayed" not in first.headers, first.headers)

# Images: a signed URL, then base64.
image = client.images.generate(model="flux-1.1-pro", prompt="a lighthouse", size="256x256")
with urllib.request.urlopen(image.data[0].url) as response:
    check(response.read(8) == b"\x89PNG\r\n\x1a\n", "a PNG")
image = client.images.generate(
    model="flux-1.1-pro", prompt="a lighthouse", size="256x256", response_format="b64_json"
)
check(base64.b64decode(image.data[0].b64_json)[:4] == b"\x89PNG", "a PNG")

# Models.
ids = [model.id for model in client.models.list()]
check(MODEL in ids and "flux-1.1-pro" in ids, ids)
check(client.models.retrieve(MODEL).owned_by == "modelroute", "owned_by")

# Errors as the SDK's own exceptions, with the platform's codes.
try:
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2
    )
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as error:
    check(error.status_code == 400, error)
    check(error.code == "INPUT_VALIDATION_ERROR", error.code)
    check(error.param == "n", error.param)
    check(error.type == "invalid_request_error", error.type)
try:
    OpenAI(api_key="sk_wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as error:
    check(error.status_code == 401 and error.code == "UNAUTHORIZED", error)
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was found")
except openai.NotFoundError as error:
    check(error.code == "NOT_FOUND", error)

print("ok")
