#!/usr/bin/env python3
"""bench.py: prompt and generation speed of a model, several runs and their median (a small
llama-bench) with the libbonsai Python binding.

    python3 examples/bench.py MODEL.gguf [-p 64] [-n 32] [-r 5] [-t THREADS] [--backend auto]

Each run clears the session, evaluates a prompt of -p tokens and generates -n tokens (greedy,
end-of-generation tokens banned so that every run generates exactly -n), then prints the
prompt and generation speeds the library measured. A first, unreported run warms up caches.
"""
import argparse
import json
import os
import statistics
import sys

try:
    import libbonsai
except ImportError:  # run from a source checkout: use bindings/python
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings",
                                    "python"))
    import libbonsai

TEXT = ("The quick brown fox jumps over the lazy dog while the river runs to the sea and the "
        "stars turn slowly above the hills. ")


def prompt_tokens(model, n):
    """n tokens of ordinary text (BOS first when the model uses one)."""
    tokens = model.tokenize(TEXT)
    while len(tokens) < n:
        tokens += model.tokenize(TEXT, add_bos=False)
    return tokens[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-p", "--prompt-tokens", type=int, default=64, help="prompt length (64)")
    ap.add_argument("-n", "--gen-tokens", type=int, default=32, help="tokens to generate (32)")
    ap.add_argument("-r", "--runs", type=int, default=5, help="measured runs (5)")
    ap.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("-c", "--ctx", type=int, default=0, help="context (0: prompt + generation)")
    ap.add_argument("--backend", default="auto", help="auto, cpu, cuda... (auto)")
    ap.add_argument("--kv-type", default="f16", choices=sorted(libbonsai.KV_TYPES))
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.runs < 1:
        ap.error("-p, -n and -r must be positive")

    try:
        model = libbonsai.Model(args.model)
    except libbonsai.BonsaiError as e:
        print("bench.py: %s" % e, file=sys.stderr)
        return 1
    with model:
        n_ctx = args.ctx or args.prompt_tokens + args.gen_tokens + 1
        session = model.session(n_ctx=n_ctx, n_threads=args.threads, backend=args.backend,
                                kv_type=args.kv_type)
        prompt = prompt_tokens(model, args.prompt_tokens)
        ban = {t: float("-inf") for t in (model.eos, model.eot) if t is not None}
        results = []
        with session:
            for run in range(args.runs + (0 if args.no_warmup else 1)):
                session.clear()  # every run evaluates the whole prompt
                gen = session.generate(prompt, max_tokens=args.gen_tokens, temperature=0,
                                       logit_bias=ban)
                gen.result()
                if run == 0 and not args.no_warmup:
                    continue
                st = gen.stats
                results.append({"prompt_tokens": st.n_prompt_evaluated,
                                "prompt_tps": st.prompt_tps,
                                "gen_tokens": st.n_generated, "gen_tps": st.generate_tps})
            backend = session.backend

        summary = {
            "model": os.path.basename(args.model), "architecture": model.architecture,
            "n_params": model.n_params, "file_size": model.file_size, "backend": backend,
            "runs": results,
            "median_prompt_tps": statistics.median(r["prompt_tps"] for r in results),
            "median_gen_tps": statistics.median(r["gen_tps"] for r in results),
        }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    print("model: %s (%s, %d parameters, %.2f MiB), backend: %s" % (
        summary["model"], summary["architecture"], summary["n_params"],
        summary["file_size"] / 2 ** 20, summary["backend"]))
    print("%-6s %10s %14s %10s %14s" % ("run", "prompt", "prompt tok/s", "generated",
                                        "gen tok/s"))
    for i, r in enumerate(results, 1):
        print("%-6d %10d %14.1f %10d %14.1f" % (i, r["prompt_tokens"], r["prompt_tps"],
                                                r["gen_tokens"], r["gen_tps"]))
    print("%-6s %10s %14.1f %10s %14.1f" % ("median", "", summary["median_prompt_tps"], "",
                                            summary["median_gen_tps"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
