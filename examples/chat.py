#!/usr/bin/env python3
"""chat.py: a multi-turn chat in the terminal with the libbonsai Python binding.

    python3 examples/chat.py MODEL.gguf [--system TEXT] [--think] [-n 512] [--temp 0.7]

Type a message and press Enter; the reply streams as it is generated. Commands: /reset starts
a new conversation, /exit (or end of input) quits. Ctrl-C during a reply stops it. Each turn
evaluates only its new tokens: the conversation stays in the session's cache.
"""
import argparse
import os
import sys

try:
    import libbonsai
except ImportError:  # run from a source checkout: use bindings/python
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings",
                                    "python"))
    import libbonsai


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--system", default=None, help="system prompt")
    ap.add_argument("--think", action="store_true", help="let the model think first")
    ap.add_argument("-n", "--max-tokens", type=int, default=512, help="reply length limit")
    ap.add_argument("--temp", type=float, default=0.7, help="temperature (0: greedy)")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("-c", "--ctx", type=int, default=0, help="context (0: the model's, <= 4096)")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--stats", action="store_true", help="print speed after each reply")
    args = ap.parse_args()

    interactive = sys.stdin.isatty()
    try:
        model = libbonsai.Model(args.model)
    except libbonsai.BonsaiError as e:
        print("chat.py: %s" % e, file=sys.stderr)
        return 1
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temp, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed)
    with model, model.chat(system=args.system, thinking=args.think, n_ctx=args.ctx,
                           n_threads=args.threads) as chat:
        if interactive:
            print("%s: /reset for a new conversation, /exit to quit" % (model.name or args.model))
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                break
            except KeyboardInterrupt:
                print()
                break
            message = line.strip()
            if not message:
                continue
            if message == "/exit":
                break
            if message == "/reset":
                chat.reset(args.system)
                print("(conversation reset)")
                continue
            try:
                with chat.send(message, **sampling) as reply:
                    for piece in reply:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
            except KeyboardInterrupt:
                pass  # leaving the with block cancelled the reply; it stays in the conversation
            except libbonsai.ContextFullError as e:
                print("\n(%s; /reset to start over)" % e.message)
                continue
            print()
            st = chat.last_stats
            if args.stats and st is not None:
                print("[%d prompt tokens (%d reused), %d generated at %.1f tok/s, stop: %s]" % (
                    st.n_prompt, st.n_prompt_reused, st.n_generated, st.generate_tps,
                    str(getattr(st.stop_reason, "name", st.stop_reason)).lower()),
                    file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
