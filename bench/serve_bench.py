#!/usr/bin/env python3
r"""Streaming load generator for any OpenAI-compatible /v1/completions server (stdlib only).

For each concurrency C in --levels, C client threads send streaming (SSE) requests back to back:
ceil(--requests / C) each, at least one (or, with --seconds, until that time has passed). Prompts
are English-like text from a seeded generator (--words MIN-MAX words each), so every server gets
the same request set; each request asks for --max-tokens tokens at --temperature (default 0: greedy)
with ignore_eos.

Per request: TTFT (until the first SSE chunk with non-empty text) and TPOT ((end - first token) /
(tokens - 1), tokens from the streamed usage.completion_tokens if present, else the number of text
chunks). Per level: output tokens/s over the level's wall time, p50/p99 TTFT and TPOT (nearest rank).
First, a long-prompt cache test: TTFT of a --long-words prompt sent once (a miss), then of the same
prompt plus a short different tail (a hit, for a server with a prefix cache).
Prints Markdown tables; --json writes every number.

  mamba2 serve --model M --port 8181 &
  python3 bench/serve_bench.py --url http://127.0.0.1:8181 --label mamba2 --levels 1,8,32,64 \
      --requests 16 --words 100-300 --max-tokens 64 --json mamba2.json
  llama-server -m M.gguf --port 8182 -np 64 ... &    # the same command with --url http://127.0.0.1:8182
"""
import argparse, http.client, json, math, random, sys, threading, time, urllib.parse

WORDS = ("the of and to a in is it you that he was for on are with as I his they be at one have this from "
         "or had by hot word but what some we can out other were all there when up use your how said an each "
         "she which do their time if will way about many then them write would like so these her long make "
         "thing see him two has look more day could go come did number sound no most people my over know "
         "water than call first who may down side been now find any new work part take get place made live "
         "where after back little only round man year came show every good me give our under name very "
         "through just form sentence great think say help low line differ turn cause much mean before move "
         "right boy old too same tell does set three want air well also play small end put home read hand "
         "port large spell add even land here must big high such follow act why ask men change went light "
         "kind off need house picture try us again animal point mother world near build self earth father").split()


def make_text(rng, n_words):
    """n_words of English-like sentences (5 to 15 words, capitalised, full stop)."""
    out, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(5, 15))
        s = [rng.choice(WORDS) for _ in range(k)]
        out.append(" ".join([s[0].capitalize()] + s[1:]) + ".")
        left -= k
    return " ".join(out)


def prompt_for(seed, level, index, lo, hi):
    rng = random.Random(f"{seed}-{level}-{index}")  # the same request set for every server
    return make_text(rng, rng.randint(lo, hi))


def stream_request(url, body, timeout=900):
    """One streaming request: {ttft, total (s), tokens, prompt_tokens, cached_tokens, timings}."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    t0 = time.perf_counter()
    first, chunks, last = None, 0, {}
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        while line := resp.readline():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            j = json.loads(data)
            last.update({k: j[k] for k in ("usage", "timings") if j.get(k)})
            if j.get("choices") and j["choices"][0].get("text"):
                chunks += 1
                first = first or time.perf_counter() - t0
        total = time.perf_counter() - t0
    finally:
        conn.close()
    usage = last.get("usage", {})
    return {"ttft": first, "total": total, "tokens": usage.get("completion_tokens") or chunks,
            "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "timings": last.get("timings")}  # llama-server's own: prompt_n, cache_n, prompt_ms, ...


def body_for(args, prompt, max_tokens):
    body = {"model": args.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": args.temperature,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    if args.temperature > 0:
        body.update(top_p=0.95, seed=args.seed)
        if args.top_k > 0:
            body.update(top_k=args.top_k)
    return body


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]  # nearest rank


def run_level(args, c):
    results, errors, lock = [], [], threading.Lock()
    deadline = time.perf_counter() + args.seconds if args.seconds else None
    per_client = max(1, math.ceil(args.requests / c))

    def client(i):
        k = 0
        while (k < per_client) if deadline is None else (time.perf_counter() < deadline):
            prompt = prompt_for(args.seed, c, i + c * k, *args.words)
            try:
                r = stream_request(args.url, body_for(args, prompt, args.max_tokens))
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - a load test reports failures, it does not stop
                with lock:
                    errors.append(repr(e))
            k += 1

    t0, start_utc = time.perf_counter(), time.strftime("%H:%M:%S", time.gmtime())
    threads = [threading.Thread(target=client, args=(i,)) for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    tpot = [(r["total"] - r["ttft"]) / (r["tokens"] - 1) for r in results if r["ttft"] is not None and r["tokens"] > 1]
    out_toks = sum(r["tokens"] for r in results)
    return {"concurrency": c, "start_utc": start_utc, "requests": len(results), "errors": len(errors),
            "error_samples": errors[:3], "wall_s": wall, "output_tokens": out_toks,
            "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in results), "throughput_tok_s": out_toks / wall,
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "tpot_p50_s": pct(tpot, 50),
            "tpot_p99_s": pct(tpot, 99),
            "per_request": [{k: r[k] for k in ("ttft", "total", "tokens", "prompt_tokens")} for r in results]}


def long_prompt_test(args):
    # A first long prompt of other words, not counted: the server's first long prefill may grow its
    # buffers, which a server in use has done long before.
    stream_request(args.url, body_for(args, make_text(random.Random(f"{args.seed}-warm"), args.long_words), 4))
    rng = random.Random(f"{args.seed}-long")
    base = make_text(rng, args.long_words)
    return {name: stream_request(args.url, body_for(args, prompt, 4))
            for name, prompt in (("miss", base), ("hit", base + " " + make_text(rng, 12)))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="default", help="the 'model' field sent")
    ap.add_argument("--label", default="", help="a name for this server in the output")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrency levels ('': the long-prompt test only)")
    ap.add_argument("--requests", type=int, default=16, help="requests per level, at least one per client")
    ap.add_argument("--seconds", type=float, default=0, help="instead of --requests: send for this long per level")
    ap.add_argument("--words", default="100-300", help="prompt length range in words")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--long-words", type=int, default=3000, help="the long-prompt test's length in words (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0, help="above 0: sampled, with top_p 0.95")
    ap.add_argument("--top-k", type=int, default=0, help="with --temperature: top_k too (0: not sent)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    args.words = tuple(int(x) for x in args.words.split("-"))
    for attempt in range(600):  # warm-up (load pages, start threads), once the model is loaded (503 until then)
        try:
            stream_request(args.url, body_for(args, "Hello there.", 2))
            break
        except RuntimeError as e:
            if "HTTP 503" not in str(e) or attempt == 599:
                raise
            time.sleep(0.5)

    res = {"label": args.label, "url": args.url, "max_tokens": args.max_tokens, "words": args.words, "levels": []}
    if args.long_words:
        res["long_prompt"] = long_prompt_test(args)
    for c in (int(x) for x in args.levels.split(",") if x):
        lv = run_level(args, c)
        res["levels"].append(lv)
        print(f"[{args.label}] C={c} from {lv['start_utc']} UTC: {lv['requests']} requests, {lv['errors']} errors, "
              f"{lv['wall_s']:.1f} s", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)

    print(f"\n### {args.label or args.url}: {args.words[0]}-{args.words[1]} words, max_tokens {args.max_tokens}\n")
    print("| C | requests | errors | prompt tok | output tok | wall s | output tok/s | TTFT p50 ms | TTFT p99 ms "
          "| TPOT p50 ms | TPOT p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for lv in res["levels"]:
        print(f"| {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['prompt_tokens']} | {lv['output_tokens']} "
              f"| {lv['wall_s']:.1f} | {lv['throughput_tok_s']:.1f} | {lv['ttft_p50_s'] * 1e3:.0f} "
              f"| {lv['ttft_p99_s'] * 1e3:.0f} | {lv['tpot_p50_s'] * 1e3:.1f} | {lv['tpot_p99_s'] * 1e3:.1f} |")
    if "long_prompt" in res:
        lp = res["long_prompt"]
        print(f"\nLong prompt ({lp['miss']['prompt_tokens']} tokens): TTFT miss {lp['miss']['ttft'] * 1e3:.0f} ms, "
              f"hit (+tail, {lp['hit']['prompt_tokens']} tokens) {lp['hit']['ttft'] * 1e3:.0f} ms, "
              f"cached tokens reported: {lp['hit']['cached_tokens']}")


if __name__ == "__main__":
    main()
