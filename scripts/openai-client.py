"""Drives a pathos server with the official `openai` Python package, as users' programs
would: whole and streamed chat completions, a JSON response format, the model list and
an error. Prints one line per check; exits non-zero on the first failure."""

import json
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key=sys.argv[2] if len(sys.argv) > 2 else "none")

models = [m.id for m in client.models.list()]
assert models, models
print("models ok", models)

messages = [{"role": "user", "content": "Name two fruits."}]
r = client.chat.completions.create(
    model=models[0], messages=messages, max_tokens=16, temperature=0, seed=1, logprobs=True, top_logprobs=2
)
whole = r.choices[0].message.content
assert whole, r
assert r.usage.completion_tokens > 0, r.usage
assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
print("whole ok", repr(whole))

parts = []
for chunk in client.chat.completions.create(
    model=models[0], messages=messages, max_tokens=16, temperature=0, seed=1, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
assert "".join(parts) == whole, (parts, whole)
print("stream ok", len(parts), "chunks")

r = client.chat.completions.create(
    model=models[0],
    messages=[{"role": "user", "content": "Describe a dog in JSON with a name and an age."}],
    max_tokens=60,
    temperature=0,
    response_format={
        "type": "json_schema",
        "json_schema": {
            "name": "dog",
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
        },
    },
)
dog = json.loads(r.choices[0].message.content)
assert isinstance(dog["name"], str) and isinstance(dog["age"], int), dog
print("json ok", dog)

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e
    print("error ok", e.status_code)
