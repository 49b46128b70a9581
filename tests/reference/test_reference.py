#!/usr/bin/env python3
"""The library's logits against the independent fp64 reference (reference.py), on two models.

    test_reference.py BONSAI_CLI [QWEN3_TINY.gguf]

Models, 64 positions each:
  - stories260K.gguf (llama, F32, from $BONSAI_TEST_DATA): BOS (1) then the reference's own greedy
    continuation, 63 ids ("Once upon a time, there was a little girl named Lily. ...");
  - the tiny Bonsai-shaped Q1_0 qwen3 model with the real 151,669-token vocabulary that the build
    makes (`bonsai synth --arch qwen3 --shape tiny`; argument or $BONSAI_TEST_QWEN3_TINY):
    64 pseudo-random ids from a 64-bit LCG seeded with 12345 (see lcg_ids).
The library runs through `bonsai eval --all --logits`, once as it is and once with
BONSAI_CPU_ISA=scalar (the fp32 reference kernels). Per position: KL(P_ref || P_lib) of the
next-token distributions and whether the top-1 token is the same. Passes (FORMAT.md section 5)
when, for every model and configuration, the mean KL < 1e-3 and top-1 agrees at >= 99% of positions.
Exit status 77 (skipped) when numpy or the test data is missing, unless BONSAI_REQUIRE_TEST_DATA=1.
"""
import os
import subprocess
import sys
import tempfile
import time

REQUIRE = os.environ.get("BONSAI_REQUIRE_TEST_DATA") == "1"
N_POS = 64
MAX_MEAN_KL = 1e-3
MIN_TOP1 = 0.99


def skip(message):
    if REQUIRE:
        sys.exit(f"FAIL (BONSAI_REQUIRE_TEST_DATA=1): {message}")
    print(f"SKIP: {message}")
    sys.exit(77)


try:
    import numpy as np
except ImportError:
    skip(f"numpy is missing for {sys.executable} (install python3-numpy)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402


def lcg_ids(n, n_vocab, seed):
    """n ids in [0, n_vocab): x <- x*6364136223846793005 + 1442695040888963407 (mod 2^64),
    id = (x >> 33) % n_vocab."""
    ids, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        ids.append((x >> 33) % n_vocab)
    return ids


def greedy_ids(g, first, n):
    ids = [first]
    while len(ids) < n:
        ids.append(int(reference.forward(g, ids)[-1].argmax()))
    return ids


def library_logits(cli, model, ids, n_vocab, env_extra, tmp):
    path = os.path.join(tmp, "logits.txt")
    env = dict(os.environ, **env_extra)
    r = subprocess.run([cli, "eval", "-m", model, "--ids", " ".join(map(str, ids)), "--all",
                        "--logits", path], env=env, capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        raise AssertionError(f"bonsai eval failed ({r.returncode}): {r.stderr.strip()}")
    flat = np.fromfile(path, sep="\n")  # "%.9g" per line, position after position
    os.remove(path)
    if flat.size != len(ids) * n_vocab:
        raise AssertionError(f"bonsai eval wrote {flat.size} logits, expected {len(ids)} x {n_vocab}")
    return flat.reshape(len(ids), n_vocab)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare(ref, lib):
    """(per-position KL(P_ref || P_lib), per-position top-1 agreement)."""
    lp_ref, lp_lib = log_softmax(ref), log_softmax(lib)
    kl = (np.exp(lp_ref) * (lp_ref - lp_lib)).sum(axis=1)
    return kl, ref.argmax(axis=1) == lib.argmax(axis=1)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cli = sys.argv[1]
    data = os.environ.get("BONSAI_TEST_DATA", "../shared/data")
    stories = os.path.join(data, "stories260K.gguf")
    qwen3 = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("BONSAI_TEST_QWEN3_TINY", "")
    for path in (stories, qwen3):
        if not path or not os.path.exists(path):
            skip(f"test model missing: {path or 'qwen3 tiny (BONSAI_TEST_QWEN3_TINY)'}")

    configs = [("default", {}), ("scalar", {"BONSAI_CPU_ISA": "scalar"})]
    failures = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("stories260K (llama, F32)", stories), ("qwen3 tiny (Q1_0)", qwen3)):
            g = reference.GGUF(path)
            n_vocab = g.tensors["token_embd.weight"][1][1]
            if g.meta["general.architecture"] == "llama":
                ids = greedy_ids(g, g.meta.get("tokenizer.ggml.bos_token_id", 1), N_POS)
            else:
                ids = lcg_ids(N_POS, n_vocab, seed=12345)
            ref = reference.forward(g, ids)
            del g
            for config, env in configs:
                kl, same = compare(ref, library_logits(cli, path, ids, n_vocab, env, tmp))
                ok = kl.mean() < MAX_MEAN_KL and same.mean() >= MIN_TOP1
                print(f"{name:26} {config:8} mean KL {kl.mean():.3e}  max KL {kl.max():.3e}  "
                      f"top-1 {same.sum()}/{len(same)}  {'ok' if ok else 'FAIL'}", flush=True)
                if not ok:
                    failures.append(f"{name} {config}: positions with top-1 differing "
                                    f"{np.flatnonzero(~same).tolist()}")
    print(f"time {time.time() - start:.1f} s")
    if failures:
        sys.exit("FAIL:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
