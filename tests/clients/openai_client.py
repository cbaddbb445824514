"""Runs requests through the official `openai` Python package against a mamba2 server.

    python3 openai_client.py BASE_URL < cases.json > results.json

Each case: {"api": "completions" | "chat", "stream": bool, "args": {...}} where args go to
client.completions.create / client.chat.completions.create as keyword arguments (extra_body for
the fields the package does not know). Prints one result per case: the text, the finish reason,
the usage the server reported (streamed: from the last chunk) and, for chat streams, the role
of the first delta. Exits 3 when the package is missing, so the caller can skip."""
import json
import sys

try:
    import openai
except ImportError:
    sys.exit(3)

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
results = []
for case in json.load(sys.stdin):
    api, stream, args = case["api"], case["stream"], dict(case["args"])
    create = client.completions.create if api == "completions" else client.chat.completions.create
    out = {"text": "", "finish_reason": None, "usage": None, "role": None}
    if not stream:
        r = create(stream=False, **args)
        c = r.choices[0]
        out["text"] = c.text if api == "completions" else c.message.content
        out["role"] = None if api == "completions" else c.message.role
        out["finish_reason"] = c.finish_reason
        out["usage"] = r.usage.model_dump() if r.usage else None
    else:
        for chunk in create(stream=True, **args):
            if chunk.choices:
                c = chunk.choices[0]
                if api == "completions":
                    out["text"] += c.text
                else:
                    if out["role"] is None and c.delta.role:
                        out["role"] = c.delta.role
                    out["text"] += c.delta.content or ""
                if c.finish_reason:
                    out["finish_reason"] = c.finish_reason
            if getattr(chunk, "usage", None):
                out["usage"] = chunk.usage.model_dump()
    results.append(out)
json.dump(results, sys.stdout)
