#!/usr/bin/env python3
"""Serving benchmark for `dmc serve` (or any OpenAI-compatible completions server), in the shape of vLLM's
benchmark_serving.py: requests arrive as a Poisson process at each request rate (or all at once for "inf"), each a
random prompt of --input-len token ids asking for exactly --output-len tokens (ignore_eos, greedy, streamed); it
reports throughput and time-to-first-token / time-per-output-token / inter-token-latency percentiles.

Why a client script and not a server-side timer: TTFT and TPOT are what a client sees (HTTP, queueing, prefill
interleaved with other sequences' decode), and the same script runs against vLLM for a comparison.

Before it times anything it checks the path it times: one greedy prompt streamed and not streamed must give the
same text, and the streamed usage chunk must count --output-len tokens; every timed request must produce exactly
--output-len tokens (a request that does not counts as failed, and any failure makes the exit status 1).

Standard library only (the GPU machine has no network to install aiohttp): a thread per in-flight request.

  scripts/bench_serve.py --base-url http://127.0.0.1:8000 --model dmc --num-prompts 200 \
      --request-rate 1,4,16,inf --input-len 1024 --output-len 128 [--json out.json] [--label vanilla]
"""
import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(xs, q):
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Client:
    def __init__(self, base_url, api_key=None, timeout=600):
        u = urllib.parse.urlparse(base_url)
        if u.scheme != "http" or not u.hostname:
            raise SystemExit(f"--base-url: expected http://HOST:PORT, got {base_url!r}")
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method, path, payload=None):
        c = self._conn()
        c.request(method, path, body=None if payload is None else json.dumps(payload), headers=self.headers)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {body[:300]!r}")
        return json.loads(body)

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, payload):
        return self.request("POST", path, payload)

    def stream(self, path, payload):
        """Yields (time, event dict) for each server-sent event until [DONE]."""
        c = self._conn()
        c.request("POST", path, body=json.dumps(payload), headers=self.headers)
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"POST {path} (stream): {r.status} {r.read()[:300]!r}")
        while True:
            line = r.readline()
            if not line:
                raise RuntimeError("stream ended without [DONE]")
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                return
            yield time.perf_counter(), json.loads(data)


def one_request(cl, model, prompt, output_len, out):
    payload = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True,
               "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, last, itl, text, tokens = None, None, [], "", None
    try:
        for t, ev in cl.stream("/v1/completions", payload):
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            for ch in ev.get("choices", []):
                if ch.get("text"):
                    text += ch["text"]
                    if ttft is None:
                        ttft = t - t0
                    else:
                        itl.append(t - last)
                    last = t
        latency = time.perf_counter() - t0
        ok = tokens == output_len and ttft is not None
        out.update(ok=ok, ttft=ttft or 0.0, latency=latency, itl=itl, output_tokens=tokens or 0, text=text,
                   error=None if ok else f"produced {tokens} tokens, expected {output_len}")
    except Exception as e:  # noqa: BLE001 - a failed request is reported, not fatal to the run
        out.update(ok=False, ttft=0.0, latency=time.perf_counter() - t0, itl=[], output_tokens=0, text="", error=str(e))


def verify(cl, model, prompt, n):
    """The path the benchmark times, checked: streamed greedy text = non-streamed, usage counts n tokens."""
    base = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
    plain = cl.post("/v1/completions", base)
    want = plain["choices"][0]["text"]
    if plain["usage"]["completion_tokens"] != n:
        raise SystemExit(f"verify: the server produced {plain['usage']['completion_tokens']} tokens, asked {n}")
    got, usage = "", None
    for _, ev in cl.stream("/v1/completions", dict(base, stream=True, stream_options={"include_usage": True})):
        for ch in ev.get("choices", []):
            got += ch.get("text") or ""
        usage = ev.get("usage") or usage
    if got != want:
        raise SystemExit(f"verify: streamed text {got!r} differs from the non-streamed {want!r}")
    if not usage or usage["completion_tokens"] != n:
        raise SystemExit(f"verify: the stream's usage chunk {usage!r} does not count {n} tokens")
    return want


def run_rate(cl, args, prompts, rate, rng):
    results = [dict() for _ in prompts]
    threads = []
    t_start = time.perf_counter()
    for i, p in enumerate(prompts):
        th = threading.Thread(target=one_request, args=(cl, args.model, p, args.output_len, results[i]), daemon=True)
        th.start()
        threads.append(th)
        if rate != float("inf") and i + 1 < len(prompts):
            time.sleep(rng.expovariate(rate))  # Poisson arrivals
    for th in threads:
        th.join()
    duration = time.perf_counter() - t_start
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] * 1e3 for r in ok]
    tpot = [(r["latency"] - r["ttft"]) / (r["output_tokens"] - 1) * 1e3 for r in ok if r["output_tokens"] > 1]
    itl = [x * 1e3 for r in ok for x in r["itl"]]
    e2e = [r["latency"] * 1e3 for r in ok]
    n_in = args.input_len * len(ok)
    n_out = sum(r["output_tokens"] for r in ok)
    summary = {
        "label": args.label, "request_rate": "inf" if rate == float("inf") else rate, "num_prompts": len(prompts),
        "completed": len(ok), "failed": len(prompts) - len(ok), "duration_s": duration,
        "total_input_tokens": n_in, "total_output_tokens": n_out,
        "request_throughput": len(ok) / duration, "output_throughput": n_out / duration,
        "total_token_throughput": (n_in + n_out) / duration,
    }
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2e)):
        summary[f"mean_{name}_ms"] = statistics.fmean(xs) if xs else 0.0
        summary[f"median_{name}_ms"] = percentile(xs, 50)
        summary[f"p99_{name}_ms"] = percentile(xs, 99)
    errors = sorted({r["error"] for r in results if r["error"]})
    return summary, errors


def print_summary(s):
    w = 50
    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=w, c="="))
    rows = [("Label:", s["label"]), ("Request rate (req/s):", s["request_rate"]),
            ("Successful requests:", s["completed"]), ("Failed requests:", s["failed"]),
            ("Benchmark duration (s):", f"{s['duration_s']:.2f}"), ("Total input tokens:", s["total_input_tokens"]),
            ("Total generated tokens:", s["total_output_tokens"]),
            ("Request throughput (req/s):", f"{s['request_throughput']:.2f}"),
            ("Output token throughput (tok/s):", f"{s['output_throughput']:.2f}"),
            ("Total Token throughput (tok/s):", f"{s['total_token_throughput']:.2f}")]
    for k, v in rows:
        print("{:<40} {:<10}".format(k, v))
    for title, key in (("Time to First Token", "ttft"), ("Time per Output Token (excl. 1st token)", "tpot"),
                       ("Inter-token Latency", "itl"), ("End-to-end Latency", "e2el")):
        print("{s:{c}^{n}}".format(s=title, n=w, c="-"))
        up = key.upper()
        print("{:<40} {:<10.2f}".format(f"Mean {up} (ms):", s[f"mean_{key}_ms"]))
        print("{:<40} {:<10.2f}".format(f"Median {up} (ms):", s[f"median_{key}_ms"]))
        print("{:<40} {:<10.2f}".format(f"P99 {up} (ms):", s[f"p99_{key}_ms"]))
    print("=" * w, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default=None, help="model name (default: the server's first /v1/models entry)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--request-rate", default="inf", help="comma list of requests/s, 'inf' = all at once")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default=None, help="write the summaries (a JSON list, one per rate) to this file")
    args = ap.parse_args()
    if args.num_prompts < 1 or args.input_len < 1 or args.output_len < 1:
        raise SystemExit("--num-prompts, --input-len and --output-len must be at least 1")
    try:
        rates = [float("inf") if r.strip() == "inf" else float(r) for r in args.request_rate.split(",")]
    except ValueError:
        raise SystemExit(f"--request-rate: expected numbers or 'inf', got {args.request_rate!r}")
    if any(r <= 0 for r in rates):
        raise SystemExit("--request-rate: rates must be positive")
    cl = Client(args.base_url, args.api_key)
    if args.model is None:
        args.model = cl.get("/v1/models")["data"][0]["id"]
    vocab = cl.get("/tokenizer_info")["vocab_size"]
    rng = random.Random(args.seed)
    # random token ids away from the special ids at the ends of the vocabulary, as vLLM's random dataset
    prompts = [[rng.randrange(100, vocab - 100) if vocab > 300 else rng.randrange(3, vocab)
                for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    verify(cl, args.model, prompts[0], min(args.output_len, 16))
    failed, summaries = False, []
    for rate in rates:
        summary, errors = run_rate(cl, args, prompts, rate, rng)
        print_summary(summary)
        for e in errors[:5]:
            print(f"error: {e}", file=sys.stderr)
        failed |= summary["failed"] > 0
        summaries.append(summary)
        if args.json:  # after every rate, atomically: a run cut short keeps the rates it finished
            tmp = f"{args.json}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(summaries, f, indent=1)
            os.replace(tmp, args.json)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
