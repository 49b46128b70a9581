#!/usr/bin/env python3
"""rag.py: answer a question from your documents with the libbonsai Python binding.

    python3 examples/rag.py MODEL.gguf --docs DIR --question "..." [-k 3] [-n 256]

Retrieval-augmented generation in three steps:

1. every .txt file of DIR is cut into passages (paragraphs, split further when longer than
   --chunk-tokens) and each passage is embedded (Model.embed: mean-pooled final hidden states,
   unit length);
2. the question is embedded and the -k passages with the highest cosine similarity (a dot
   product of unit vectors) are retrieved;
3. the model answers in a chat, with the retrieved passages given as context.

--embed-model uses another (e.g. smaller) model for the embeddings.
"""
import argparse
import glob
import os
import sys

try:
    import libbonsai
except ImportError:  # run from a source checkout: use bindings/python
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings",
                                    "python"))
    import libbonsai

SYSTEM = ("Answer the question using only the context. If the context does not contain the "
          "answer, say that you do not know.")


def passages(model, folder, chunk_tokens):
    """(label, text) of every passage of the .txt files of `folder`, in name order."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.txt"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            paragraphs = [p.strip() for p in f.read().split("\n\n") if p.strip()]
        n = 0
        for para in paragraphs:
            tokens = model.tokenize(para, add_bos=False)
            for at in range(0, len(tokens), chunk_tokens):
                n += 1
                text = model.detokenize(tokens[at:at + chunk_tokens]) if len(tokens) > \
                    chunk_tokens else para
                out.append(("%s#%d" % (os.path.basename(path), n), text))
    return out


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--docs", required=True, help="folder of .txt files")
    ap.add_argument("--question", "-q", required=True)
    ap.add_argument("-k", "--top-k", type=int, default=3, help="passages to retrieve (3)")
    ap.add_argument("--embed-model", help="model for the embeddings (default: MODEL)")
    ap.add_argument("--chunk-tokens", type=int, default=256, help="longest passage (256)")
    ap.add_argument("-n", "--max-tokens", type=int, default=256, help="answer length limit")
    ap.add_argument("--temp", type=float, default=0.0, help="temperature (0: greedy)")
    ap.add_argument("-c", "--ctx", type=int, default=0, help="chat context (0: the model's)")
    ap.add_argument("--no-answer", action="store_true", help="only retrieve")
    args = ap.parse_args()

    try:
        model = libbonsai.Model(args.model)
        embedder = libbonsai.Model(args.embed_model) if args.embed_model else model
    except libbonsai.BonsaiError as e:
        print("rag.py: %s" % e, file=sys.stderr)
        return 1

    docs = passages(embedder, args.docs, args.chunk_tokens)
    if not docs:
        print("rag.py: no .txt files in %s" % args.docs, file=sys.stderr)
        return 1
    vectors = [embedder.embed(text) for _, text in docs]
    query = embedder.embed(args.question)
    ranked = sorted(range(len(docs)), key=lambda i: dot(query, vectors[i]), reverse=True)
    top = ranked[:args.top_k]
    print("retrieved (cosine similarity):")
    for rank, i in enumerate(top, 1):
        label, text = docs[i]
        preview = " ".join(text.split())
        print("  %d. %.4f  %s: %s" % (rank, dot(query, vectors[i]), label,
                                      preview[:60] + ("..." if len(preview) > 60 else "")))
    if args.no_answer:
        return 0

    context = "\n\n".join("[%s]\n%s" % docs[i] for i in top)
    message = "Context:\n%s\n\nQuestion: %s" % (context, args.question)
    print("answer:")
    with model.chat(system=SYSTEM, n_ctx=args.ctx) as chat:
        try:
            for piece in chat.send(message, max_tokens=args.max_tokens, temperature=args.temp):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except libbonsai.ContextFullError as e:
            print("rag.py: %s (use fewer passages, -k, or a larger -c)" % e.message,
                  file=sys.stderr)
            return 1
        print()
        st = chat.last_stats
        print("[%d prompt tokens, %d generated at %.1f tok/s]" % (st.n_prompt, st.n_generated,
                                                                 st.generate_tps),
              file=sys.stderr)
    if embedder is not model:
        embedder.close()
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
