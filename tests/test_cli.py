#!/usr/bin/env python3
"""The `bonsai` tool: every command on real files and on broken ones (right output, clean failures,
never a crash), its option parser and help pages, and its progress bars."""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest

BONSAI = None
DATA = os.environ.get("BONSAI_TEST_DATA", "../shared/data")
REQUIRE_DATA = os.environ.get("BONSAI_REQUIRE_TEST_DATA") == "1"


def data(name):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        if REQUIRE_DATA:
            raise AssertionError(f"required test data missing: {path}")
        raise unittest.SkipTest(f"test data missing: {path} (set BONSAI_TEST_DATA)")
    return path


def run(*args):
    return subprocess.run([BONSAI, *args], capture_output=True, text=True, errors="replace",
                          timeout=120)


def run_pty(*args, stdout_pty=False):
    """Runs bonsai with standard error on a pseudo-terminal (and standard output too when
    stdout_pty): (exit code, what the terminal showed, stdout when it was a pipe)."""
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([BONSAI, *args], stdin=subprocess.DEVNULL,
                         stdout=slave if stdout_pty else subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the program closed the terminal (it exited)
            break
        if not chunk:
            break
        shown.append(chunk)
    os.close(master)
    out = p.stdout.read().decode(errors="replace") if p.stdout else ""
    if p.stdout:
        p.stdout.close()
    p.wait(timeout=120)
    return p.returncode, b"".join(shown).decode(errors="replace"), out


class Info(unittest.TestCase):
    def test_stories260k(self):
        r = run("info", data("stories260K.gguf"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("architecture:  llama\n", r.stdout)
        self.assertIn("tensors:       48\n", r.stdout)
        self.assertIn("metadata keys: 19\n", r.stdout)
        self.assertIn("tensors (48):", r.stdout)
        self.assertIn("blk.4.ffn_norm.weight", r.stdout)
        # long arrays are summarised, not dumped
        line = [l for l in r.stdout.splitlines() if "tokenizer.ggml.tokens" in l][0]
        self.assertIn("...", line)
        self.assertLess(len(line), 300)

    def test_all_value_types(self):
        r = run("info", data("hyllama-dummy.gguf"))
        self.assertEqual(r.returncode, 0, r.stderr)
        for text in ("= 18", "= -19", "= 4660", "= -4661", "= 305419896", "= -305419897",
                     "= 1311768467463790320", "= -1311768467463790321", "= true",
                     '= "hello world"', "= [1, 2, 3, 4]", '= ["hello", "world", "!"]',
                     "tensor_9"):
            self.assertIn(text, r.stdout)

    def test_vocab_only(self):
        r = run("info", "--no-tensors", data("ggml-vocab-gpt-2.gguf"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("vocabulary:    50257 tokens", r.stdout)
        self.assertIn("string[50000]", r.stdout)

    def test_usage(self):
        self.assertEqual(run().returncode, 2)
        self.assertEqual(run("no-such-command").returncode, 2)
        self.assertEqual(run("info").returncode, 2)
        self.assertEqual(run("info", "--bogus", "x").returncode, 2)
        r = run("info", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("SYNOPSIS\n    bonsai info ", r.stdout)
        r = run("version")
        self.assertEqual(r.returncode, 0)
        self.assertIn("bonsai ", r.stdout)


class Quantize(unittest.TestCase):
    def test_refuses_and_keeps(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "q.gguf")
            r = run("quantize", data("stories260K.gguf"), out, "--type", "q1_0")
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot be converted to Q1_0", r.stderr)
            self.assertIn("token_embd.weight", r.stderr)
            self.assertFalse(os.path.exists(out))
            r = run("quantize", data("stories260K.gguf"), out, "--type", "q1_0", "--keep")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("0 matrices converted", r.stdout)
            r = run("info", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("metadata keys: 19", r.stdout)
            self.assertEqual(run("quantize", "a", "b", "--type", "q4_0").returncode, 2)
            self.assertEqual(run("quantize", "a").returncode, 2)


class EvalAndBench(unittest.TestCase):
    def test_eval(self):
        model = data("stories260K.gguf")
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "logits.txt")
            r = run("eval", "-m", model, "--ids", "1 403 407 261 378", "--logits", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('next token: 432 ","', r.stdout)  # "<s> Once upon a time" -> ","
            last = [float(v) for v in open(out).read().split()]
            self.assertEqual(len(last), 512)
            self.assertEqual(max(range(512), key=lambda i: last[i]), 432)
            r = run("eval", "-m", model, "--ids", "1,403,407,261,378", "--logits", out, "--all")
            self.assertEqual(r.returncode, 0, r.stderr)
            every = [float(v) for v in open(out).read().split()]
            self.assertEqual(len(every), 5 * 512)
            for a, b in zip(every[4 * 512:], last):
                self.assertAlmostEqual(a, b, delta=1e-3)
        self.assertEqual(run("eval", "-m", model, "--ids", "1 -5").returncode, 2)
        self.assertEqual(run("eval", "-m", model).returncode, 2)
        r = run("eval", "-m", model, "--ids", "1 99999")
        self.assertEqual(r.returncode, 1)
        self.assertIn("outside the vocabulary", r.stderr)

    def test_bench_json(self):
        import json
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "16", "-n", "8", "-r", "2",
                "-t", "2", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        row = json.loads(r.stdout)
        self.assertEqual((row["pp"], row["tg"], row["repetitions"]), (16, 8, 2))
        self.assertGreater(row["pp_tok_s"], 0)
        self.assertGreater(row["tg_tok_s"], 0)
        self.assertLessEqual(row["tg_min"], row["tg_tok_s"])
        self.assertIn("cpu", row["backend"])
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "8", "-n", "4", "-r", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("pp8", r.stdout)
        self.assertIn("tg4", r.stdout)
        self.assertEqual(run("bench").returncode, 2)
        # the bandwidth bound: stories260K reads its matrices but token_embd (output.weight is
        # separate: one embedding row is gathered), 131,072 + 5 x 181,248 bytes, plus the fp16 KV
        # cache up to the middle of 8 tokens: 5 layers x 2 x 32 values x 2 bytes x 4
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "0", "-n", "8", "-r", "1",
                "--bw", "10", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        bound = [row for row in rows if "tg_bound" in row][0]
        self.assertAlmostEqual(bound["bytes_per_token"], 131072 + 5 * 181248 + 5 * 2 * 32 * 2 * 4,
                               delta=1)
        self.assertAlmostEqual(bound["tg_bound"], 10e9 / bound["bytes_per_token"], delta=0.1)
        self.assertAlmostEqual(bound["tg_fraction"], rows[0]["tg_tok_s"] / bound["tg_bound"],
                               delta=1e-3)
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "0", "-n", "4", "-r", "1",
                "--bw", "10")
        self.assertIn("% of it", r.stdout)
        # -d: every test from a cache already holding that many tokens; the bound counts them
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "0", "-n", "8", "-d", "24",
                "-r", "1", "--bw", "10", "--sessions", "2", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual((rows[0]["depth"], rows[0]["tg"]), (24, 8))
        self.assertAlmostEqual(rows[1]["bytes_per_token"],
                               131072 + 5 * 181248 + 5 * 2 * 32 * 2 * (24 + 4), delta=1)
        self.assertEqual((rows[2]["sessions"], rows[2]["depth"]), (2, 24))
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "8", "-n", "4", "-d", "16",
                "-r", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("\npp8 @ d16 ", r.stdout)
        self.assertIn("\ntg4 @ d16 ", r.stdout)

    def test_bench_kv_type(self):
        """--kv-type q8_0: the sessions' caches in Q8_0; JSON says which, and the bound counts
        34 bytes per 32 cached values instead of 64 (the bytes a token reads grow with -d by
        17/32 as much). A model whose heads Q8_0 cannot take (stories260K: 8 values) fails with
        the reason."""
        import json
        model = os.environ.get("BONSAI_TEST_QWEN3_TINY")
        if not model:
            self.skipTest("no qwen3-tiny.gguf (BONSAI_TEST_QWEN3_TINY)")
        grow = {}
        for kv in ("f16", "q8_0"):
            bpt = []
            for depth in ("8", "16"):
                r = run("bench", "-m", model, "-p", "0", "-n", "4", "-d", depth, "-r", "1",
                        "--bw", "10", "--kv-type", kv, "--json")
                self.assertEqual(r.returncode, 0, r.stderr)
                rows = [json.loads(line) for line in r.stdout.splitlines()]
                self.assertEqual(rows[0]["kv_type"], kv)
                bpt.append(rows[1]["bytes_per_token"])
            grow[kv] = bpt[1] - bpt[0]
        self.assertGreater(grow["f16"], 0)
        self.assertAlmostEqual(grow["q8_0"] / grow["f16"], 17 / 32, delta=1e-6)
        r = run("bench", "-m", model, "-p", "0", "-n", "2", "-r", "1", "--kv-type", "q8_0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("KV cache q8_0)", r.stdout.splitlines()[0])
        r = run("bench", "-m", data("stories260K.gguf"), "-p", "0", "-n", "2", "-r", "1",
                "--kv-type", "q8_0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("multiple of 32", r.stderr)

    def test_bench_prints_as_it_goes(self):
        """Each result line reaches a pipe when it is measured, not at exit: a run cut short
        (a timeout on a borrowed GPU machine) keeps what it measured. 1,001 prompts of 16
        tokens (about a second), then 1,001 generations of 500 tokens one by one (minutes): the
        prompt's line must come while the generations still run."""
        import select
        p = subprocess.Popen([BONSAI, "bench", "-m", data("stories260K.gguf"), "-p", "16",
                              "-n", "500", "-r", "1000", "-t", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        got = b""  # read from the descriptor itself: a buffered reader would hide lines from select
        try:
            while b"\npp16 " not in got:
                ready, _, _ = select.select([p.stdout], [], [], 120)
                self.assertTrue(ready, f"no prompt line within 120 s after {got!r}")
                chunk = os.read(p.stdout.fileno(), 4096)
                self.assertTrue(chunk, f"bench ended after {got!r}")
                got += chunk
            self.assertNotIn(b"\ntg500 ", got, "the lines came only at exit")
            self.assertIsNone(p.poll(), "the lines came only at exit")
        finally:
            p.kill()
            p.communicate()
        lines = got.decode().splitlines()
        self.assertTrue(lines[0].startswith("model:"), lines)
        self.assertTrue(lines[1].startswith("backend:  cpu"), lines)


class CudaEmulated(unittest.TestCase):
    """The commands' GPU paths end to end (--backend cuda): bench with its bandwidth bound and
    concurrent sessions, info --backends, run with a JSON constraint, on the CUDA backend built
    over the CPU emulator (tests/cuda_emu) where there is no GPU. meson test cli_cuda_emulated
    sets BONSAI_TEST_CUDA_EMU_DIR (the emulated module's directory)."""

    @classmethod
    def setUpClass(cls):
        cls.module_dir = os.environ.get("BONSAI_TEST_CUDA_EMU_DIR")
        cls.model = os.environ.get("BONSAI_TEST_QWEN3_TINY_4K")
        if not cls.module_dir or not cls.model:
            raise unittest.SkipTest("no emulated CUDA module (BONSAI_TEST_CUDA_EMU_DIR) or "
                                    "qwen3-tiny-4k.gguf (BONSAI_TEST_QWEN3_TINY_4K)")

    def cuda(self, *args, devices=None):
        env = dict(os.environ, BONSAI_BACKEND_PATH=self.module_dir)
        if devices:
            env["CUDA_EMU_DEVICES"] = devices  # their compute capabilities, "7.5,9.0"
        return subprocess.run([BONSAI, *args], capture_output=True, text=True, errors="replace",
                              timeout=300, env=env)

    def cuda_status(self, devices):
        r = self.cuda("info", "--backends", devices=devices)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [x for x in r.stdout.splitlines() if x.startswith("cuda ")][0]

    def test_old_first_device(self):
        """A machine whose GPU 0 is too old: "cuda" and "auto" take the first one that will do,
        "cuda:0" is refused saying why; with no such GPU, the reason names each."""
        import json
        self.assertEqual(self.cuda_status("7.5,8.6").split()[1], "usable")
        for backend in ("cuda", "auto"):
            r = self.cuda("bench", "-m", self.model, "--backend", backend, "-p", "4", "-n", "2",
                          "-r", "1", "--json", devices="7.5,8.6")
            self.assertEqual(r.returncode, 0, r.stderr)
            row = json.loads(r.stdout.splitlines()[0])
            self.assertTrue(row["backend"].startswith("cuda:1 cuda_emu"), row)
        r = self.cuda("run", "-m", self.model, "--backend", "cuda:0", "-p", "x", "-n", "2",
                      devices="7.5,8.6")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cuda:0: cuda_emu has compute capability 7.5", r.stderr)
        line = self.cuda_status("6.1,7.5")
        self.assertEqual(line.split()[1], "unusable")
        self.assertIn("8.0 or newer; cuda:0 cuda_emu has 6.1, cuda:1 cuda_emu has 7.5", line)
        r = self.cuda("run", "-m", self.model, "--backend", "cuda", "-p", "x", "-n", "2",
                      devices="6.1,7.5")
        self.assertEqual(r.returncode, 1)
        self.assertIn("'cuda' is not usable: this build needs", r.stderr)

    def test_info_backends(self):
        line = self.cuda_status(None)
        self.assertEqual(line.split()[1], "usable")
        self.assertIn(os.path.join(self.module_dir, "libbonsai-cuda.so"), line)

    def test_bench(self):
        import json
        r = self.cuda("bench", "-m", self.model, "--backend", "cuda", "-p", "16", "-n", "4",
                      "-r", "2", "--sessions", "1,3", "--bw", "3350", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(rows), 4, r.stdout)
        main, bound, one, three = rows
        for row in rows:
            self.assertTrue(row["backend"].startswith("cuda:0 cuda_emu"), row)
        self.assertEqual((main["pp"], main["tg"], main["repetitions"]), (16, 4, 2))
        self.assertGreater(main["pp_tok_s"], 0)
        self.assertLessEqual(main["tg_min"], main["tg_tok_s"])
        self.assertLessEqual(main["tg_tok_s"], main["tg_max"])
        self.assertAlmostEqual(bound["tg_bound"], 3350e9 / bound["bytes_per_token"], delta=1)
        self.assertAlmostEqual(bound["tg_fraction"], main["tg_tok_s"] / bound["tg_bound"],
                               delta=1e-3)
        self.assertEqual((one["sessions"], three["sessions"]), (1, 3))
        for row in (one, three):
            self.assertEqual(row["tg"], 4)
            self.assertAlmostEqual(row["per_session_tok_s"] * row["sessions"],
                                   row["aggregate_tok_s"], delta=0.05 * row["aggregate_tok_s"])

    def test_run_json(self):
        import json
        r = self.cuda("run", "-m", self.model, "--backend", "cuda", "-p", "Data:", "--json",
                      "-n", "40", "--seed", "3")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertIsInstance(doc, dict)
        r = self.cuda("run", "-m", self.model, "--backend", "cuda:1", "-p", "x", "-n", "2")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cuda:1", r.stderr)


class BenchKernels(unittest.TestCase):
    def test_json_lines(self):
        import json
        r = subprocess.run([BONSAI, "bench-kernels", "--json", "--quick", "--tokens", "8",
                            "--threads", "2"], capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        kernels = {row["kernel"] for row in rows}
        self.assertEqual(kernels, {"memory_read", "q1_0_gemv", "q1_0_gemm"})
        for row in rows:
            for key in ("kernel", "isa", "rows", "cols", "threads", "gbps", "bw_fraction"):
                self.assertIn(key, row)
            self.assertGreater(row["gbps"], 0)
        gemv = [row for row in rows if row["kernel"] == "q1_0_gemv"]
        self.assertIn("scalar", {row["isa"] for row in gemv})
        self.assertEqual({row["threads"] for row in gemv}, {1, 2})
        self.assertEqual({(row["rows"], row["cols"]) for row in gemv},
                         {(2048, 2048), (6144, 2048), (2048, 6144)})

    def test_backend(self):
        """--backend times a backend's operations through its table (here the CPU's)."""
        import json
        r = subprocess.run([BONSAI, "bench-kernels", "--backend", "cpu", "--json", "--quick",
                            "--tokens", "12", "--threads", "2"], capture_output=True, text=True,
                           timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual({row["kernel"] for row in rows},
                         {"matmul", "matmul_multi", "attention", "attn_prep_ops"})
        for row in rows:
            self.assertIn("cpu", row["backend"])
            self.assertGreater(row["seconds"], 0)
            if row["kernel"] == "attn_prep_ops":  # moves data: GB/s, no arithmetic to count
                self.assertGreater(row["gbps"], 0)
            else:
                self.assertGreater(row["tflops"], 0)
        self.assertEqual({row["tokens"] for row in rows if row["kernel"] == "matmul"}, {1, 8, 12})
        r = subprocess.run([BONSAI, "bench-kernels", "--backend", "nosuch"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("nosuch", r.stderr)


def slurp(path, mode="rb"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        return f.read()


def read_gguf(path):
    """A small independent GGUF reader: ({key: (type, value)}, [(name, dims, type, offset)],
    start of the data section, file size)."""
    import struct
    blob = slurp(path)
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, blob, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string():
        nonlocal pos
        n = take("Q")
        s = blob[pos:pos + n].decode("utf-8")
        pos += n
        return s

    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
               12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalars[t])

    assert blob[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = (take("I"), None)
        meta[key] = (meta[key][0], value(meta[key][0]))
    tensors = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        tensors.append((name, dims, take("I"), take("Q")))
    align = meta.get("general.alignment", (4, 32))[1]
    start = (pos + align - 1) // align * align
    return meta, tensors, start, len(blob)


def bonsai_tensors(n_layer, n_embd, n_ff, n_head, n_kv, vocab, separate_output):
    """FORMAT.md section 3: {name: (dims, type)} with type 0 = F32, 41 = Q1_0."""
    t = {"token_embd.weight": ([n_embd, vocab], 41), "output_norm.weight": ([n_embd], 0)}
    if separate_output:
        t["output.weight"] = ([n_embd, vocab], 41)
    for i in range(n_layer):
        b = f"blk.{i}."
        t.update({b + "attn_norm.weight": ([n_embd], 0),
                  b + "attn_q.weight": ([n_embd, n_head * 128], 41),
                  b + "attn_k.weight": ([n_embd, n_kv * 128], 41),
                  b + "attn_v.weight": ([n_embd, n_kv * 128], 41),
                  b + "attn_output.weight": ([n_head * 128, n_embd], 41),
                  b + "attn_q_norm.weight": ([128], 0),
                  b + "attn_k_norm.weight": ([128], 0),
                  b + "ffn_norm.weight": ([n_embd], 0),
                  b + "ffn_gate.weight": ([n_embd, n_ff], 41),
                  b + "ffn_up.weight": ([n_embd, n_ff], 41),
                  b + "ffn_down.weight": ([n_ff, n_embd], 41)})
    return t


def tensor_bytes(dims, ggml_type):
    n = 1
    for d in dims:
        n *= d
    return n * 4 if ggml_type == 0 else n // 128 * 18


class Synth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="bonsai-synth-")
        cls.tokenizer = data("qwen3-tokenizer.json")
        data("qwen3-tokenizer_config.json")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def synth(self, name, *args, shape="tiny", seed="1"):
        out = os.path.join(self.dir, name)
        r = run("synth", "--arch", "qwen3", "--shape", shape, "--seed", seed, "--tokenizer",
                self.tokenizer, "-o", out, *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def check_layout(self, path, expected):
        meta, tensors, start, size = read_gguf(path)
        self.assertEqual(len(tensors), len(expected))
        self.assertEqual({t[0] for t in tensors}, set(expected))
        offset = 0
        for name, dims, ggml_type, off in tensors:
            self.assertEqual((dims, ggml_type), expected[name], name)
            self.assertEqual(off, offset, name)
            offset += (tensor_bytes(dims, ggml_type) + 31) // 32 * 32
        self.assertEqual(start + offset, size)
        return meta, sum(tensor_bytes(d, t) for _, d, t, _ in tensors)

    def test_tiny(self):
        path = self.synth("tiny.gguf")
        r = run("info", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("architecture:  qwen3\n", r.stdout)
        self.assertIn("tensors:       24\n", r.stdout)
        self.assertIn("vocabulary:    151669 tokens", r.stdout)
        self.assertIn("n_layer 2, n_embd 256, n_ff 768, n_head 4, n_head_kv 2, head_dim 128",
                      r.stdout)
        self.assertIn("rope scaling yarn x4 (orig ctx 8192)", r.stdout)
        meta, _ = self.check_layout(path, bonsai_tensors(2, 256, 768, 4, 2, 151669, False))
        v = {k: val for k, (_, val) in meta.items()}
        self.assertEqual(v["general.architecture"], "qwen3")
        for key, want in (("block_count", 2), ("context_length", 4096), ("embedding_length", 256),
                          ("feed_forward_length", 768), ("attention.head_count", 4),
                          ("attention.head_count_kv", 2), ("attention.key_length", 128),
                          ("attention.value_length", 128),
                          ("rope.scaling.original_context_length", 8192)):
            self.assertEqual(meta["qwen3." + key], (4, want), key)
        self.assertAlmostEqual(v["qwen3.attention.layer_norm_rms_epsilon"], 1e-6, delta=1e-12)
        self.assertEqual(v["qwen3.rope.freq_base"], 1e6)
        self.assertEqual(v["qwen3.rope.scaling.type"], "yarn")
        self.assertEqual(v["qwen3.rope.scaling.factor"], 4.0)
        self.assertEqual(v["tokenizer.ggml.model"], "gpt2")
        self.assertEqual(v["tokenizer.ggml.pre"], "qwen2")
        # the tokenizer, against Python's own reading of the JSON
        import json
        tok = json.loads(slurp(self.tokenizer, "r"))
        cfg = json.loads(slurp(data("qwen3-tokenizer_config.json"), "r"))
        tokens, types = v["tokenizer.ggml.tokens"], v["tokenizer.ggml.token_type"]
        self.assertEqual(len(tokens), 151669)
        self.assertEqual(meta["tokenizer.ggml.token_type"][0], 9)
        for text, i in tok["model"]["vocab"].items():
            self.assertEqual(tokens[i], text)
        self.assertEqual(types[:151643], [1] * 151643)
        for t in tok["added_tokens"]:
            self.assertEqual(tokens[t["id"]], t["content"])
            self.assertEqual(types[t["id"]], 3 if t["special"] else 4)
        self.assertEqual(tokens[151644], "<|im_start|>")
        self.assertEqual(types[151667], 4)  # <think> is not special
        merges = v["tokenizer.ggml.merges"]
        self.assertEqual(len(merges), 151387)
        self.assertEqual(merges, [" ".join(m) for m in tok["model"]["merges"]])
        self.assertEqual(meta["tokenizer.ggml.eos_token_id"], (4, 151645))
        self.assertEqual(meta["tokenizer.ggml.padding_token_id"], (4, 151643))
        self.assertEqual(meta["tokenizer.ggml.add_bos_token"], (7, False))
        self.assertNotIn("tokenizer.ggml.bos_token_id", meta)  # bos_token is null
        self.assertEqual(v["tokenizer.chat_template"], cfg["chat_template"])

    def test_deterministic(self):
        a = slurp(self.synth("a.gguf"))
        b = slurp(self.synth("b.gguf", "--threads", "1"))
        c = slurp(self.synth("c.gguf", seed="2"))
        self.assertEqual(a, b)
        self.assertEqual(len(a), len(c))
        self.assertNotEqual(a, c)

    def test_vocab_only(self):
        path = self.synth("vocab.gguf", "--vocab-only")
        r = run("info", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tensors:       0\n", r.stdout)
        self.assertIn("vocabulary:    151669 tokens", r.stdout)
        self.assertIn("n_layer 2, n_embd 256", r.stdout)
        meta, tensors, _, _ = read_gguf(path)
        self.assertEqual(tensors, [])
        self.assertEqual(meta["general.architecture"], (8, "qwen3"))

    def test_small_vocab(self):
        path = self.synth("v4k.gguf", "--vocab", "4096")
        meta, _ = self.check_layout(path, bonsai_tensors(2, 256, 768, 4, 2, 4096, False))
        v = {k: val for k, (_, val) in meta.items()}
        import json
        tok = json.loads(slurp(self.tokenizer, "r"))
        vocab = tok["model"]["vocab"]
        self.assertEqual(len(v["tokenizer.ggml.tokens"]), 4096)
        for text, i in vocab.items():
            if i < 4096:
                self.assertEqual(v["tokenizer.ggml.tokens"][i], text)
        # the merges among the kept tokens, in order (Qwen3's: 256 bytes, then one per merge)
        want = [" ".join(m) for m in tok["model"]["merges"]
                if vocab.get(m[0] + m[1], 1 << 30) < 4096 and vocab[m[0]] < 4096
                and vocab[m[1]] < 4096]
        self.assertEqual(v["tokenizer.ggml.merges"], want)
        self.assertEqual(len(want), 4096 - 256)
        # no special id beyond the vocabulary, no chat template (its tokens are gone)
        for key in ("eos_token_id", "padding_token_id", "bos_token_id"):
            self.assertNotIn("tokenizer.ggml." + key, meta)
        self.assertNotIn("tokenizer.chat_template", meta)
        # where the whole tokenizer's tokens are all below 4096, the same ids; else smaller pieces
        full = self.synth("full-vocab.gguf", "--vocab-only")
        for text, ids in (("the world, this is a test.", "1782 1879 11 419 374 264 1273 13"),
                          ("Hello", "39 301 385")):
            r = run("tokenize", "-m", path, text)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.split(), ids.split())
        self.assertEqual(run("tokenize", "-m", full, "the world, this is a test.").stdout.split(),
                         "1782 1879 11 419 374 264 1273 13".split())
        self.assertEqual(run("tokenize", "-m", full, "Hello").stdout.split(), ["9707"])

    def test_bad_arguments(self):
        out = os.path.join(self.dir, "bad.gguf")
        base = ["synth", "--tokenizer", self.tokenizer, "-o", out]
        for args in ([], ["--arch", "qwen3"], base + ["--arch", "qwen3"],
                     base + ["--shape", "tiny"], base + ["--arch", "llama", "--shape", "tiny"],
                     base + ["--arch", "qwen3", "--shape", "2b"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--seed", "x"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--seed", "-1"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--threads", "0"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--vocab", "255"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--bogus"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--seed"],
                     ["synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer",
                      self.tokenizer]):
            r = run(*args)
            self.assertEqual(r.returncode, 2, args)
        self.assertFalse(os.path.exists(out))
        r = run("synth", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("SYNOPSIS\n    bonsai synth ", r.stdout)

    def test_missing_or_bad_tokenizer(self):
        d = tempfile.mkdtemp(dir=self.dir)
        out = os.path.join(d, "m.gguf")
        r = run("synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer",
                os.path.join(d, "missing.json"), "-o", out)
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("bonsai synth: "), r.stderr)
        self.assertIn("missing.json", r.stderr)
        # the default config is looked for next to the tokenizer
        tok = os.path.join(d, "tok.json")
        shutil.copy(self.tokenizer, tok)
        r = run("synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer", tok, "-o", out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("qwen3-tokenizer_config.json", r.stderr)
        # broken JSON: the position is reported; nothing is left behind
        bad = os.path.join(d, "bad.json")
        with open(bad, "w") as f:
            f.write('{"model": {"vocab": {"a": 0,}}}')
        r = run("synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer", bad,
                "--tokenizer-config", data("qwen3-tokenizer_config.json"), "-o", out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad.json:1:29: trailing comma", r.stderr)
        # a gap in the ids
        with open(bad, "w") as f:
            f.write('{"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []}}')
        r = run("synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer", bad,
                "--tokenizer-config", data("qwen3-tokenizer_config.json"), "-o", out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("gap", r.stderr)
        self.assertEqual(sorted(os.listdir(d)), ["bad.json", "tok.json"])

    def test_1_7b_weight_bytes(self):
        # FORMAT.md: Bonsai-1.7B holds 242,357,152 bytes of weights (about 9 s on 2 cores)
        path = self.synth("1.7b.gguf", shape="1.7b")
        _, total = self.check_layout(path, bonsai_tensors(28, 2048, 6144, 16, 8, 151669, False))
        self.assertEqual(total, 242357152)
        os.remove(path)


class BadFiles(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="bonsai-cli-")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def write(self, name, content):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def assert_clean_failure(self, path, needle):
        r = run("info", path)
        self.assertEqual(r.returncode, 1, f"{path}: exit {r.returncode}\n{r.stderr}")
        self.assertTrue(r.stderr.startswith("bonsai info: "), r.stderr)
        self.assertIn(needle, r.stderr)
        self.assertNotIn("Sanitizer", r.stderr)

    def test_missing_and_special(self):
        self.assert_clean_failure(os.path.join(self.dir, "missing.gguf"), "cannot open")
        self.assert_clean_failure(self.dir, "not a regular file")
        self.assert_clean_failure(self.write("empty.gguf", b""), "empty")
        self.assert_clean_failure(self.write("text.gguf", b"hello, world\n"), "not a GGUF file")

    def test_truncated_real_file(self):
        blob = open(data("stories260K.gguf"), "rb").read()
        rng = random.Random(7)
        cuts = [4, 8, 23, 24, 100, 8000, 14152, 14176, len(blob) - 1]
        cuts += [rng.randrange(1, len(blob)) for _ in range(20)]
        for cut in cuts:
            self.assert_clean_failure(self.write(f"cut{cut}.gguf", blob[:cut]), "truncated")

    def test_random_damage(self):
        blob = bytearray(open(data("stories260K.gguf"), "rb").read())
        rng = random.Random(11)
        for i in range(60):
            damaged = bytearray(blob)
            for _ in range(rng.randrange(1, 8)):
                damaged[rng.randrange(0, 14176)] = rng.randrange(256)
            r = run("info", self.write(f"damaged{i}.gguf", bytes(damaged)))
            self.assertIn(r.returncode, (0, 1), r.stderr)
            self.assertNotIn("Sanitizer", r.stderr)
            if r.returncode == 1:
                self.assertTrue(r.stderr.startswith("bonsai info: "), r.stderr)


class Generate(unittest.TestCase):
    """bonsai run, chat and eval --perplexity."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="bonsai-gen-")
        cls.stories = data("stories260K.gguf")
        cls.qwen = os.path.join(cls.dir, "qwen3-tiny.gguf")
        r = run("synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer",
                data("qwen3-tokenizer.json"), "-o", cls.qwen)
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def test_story(self):
        r = run("run", "-m", self.stories, "-p", "Once upon a time", "-n", "60", "--temp", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(
            "Once upon a time, there was a little girl named Lily."), r.stdout)
        self.assertEqual(r.stderr, "")

    def test_stop_and_stats(self):
        r = run("run", "-m", self.stories, "-p", "Once upon a time", "-n", "60", "--temp", "0",
                "--stop", "Lily", "--stats")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "Once upon a time, there was a little girl named \n")
        self.assertIn("stop: stop string", r.stderr)
        self.assertIn("prompt: 5 tokens", r.stderr)

    def test_json_mode(self):
        import json
        # random weights never close a string of their own accord: the document is finished
        # within the token limit (-n) however small
        for seed, n in enumerate((300, 120, 40, 12, 5, 2)):
            r = run("run", "-m", self.qwen, "-p", "Give me JSON", "--chat", "--json", "-n", str(n),
                    "--seed", str(seed), "--stats", "-t", "1")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("stop: JSON complete", r.stderr)
            doc = json.loads(r.stdout)
            self.assertIsInstance(doc, dict)
            used = int(r.stderr.split("generated: ")[1].split()[0])
            self.assertLessEqual(used, n)
        # and when the context is what runs out
        r = run("run", "-m", self.qwen, "-p", "Give me JSON", "--chat", "--json", "-c", "64",
                "--seed", "9", "--stats", "-t", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("stop: JSON complete", r.stderr)
        self.assertIsInstance(json.loads(r.stdout), dict)

    def test_json_schema(self):
        import json
        schema = {"type": "object",
                  "properties": {"name": {"type": "string"},
                                 "age": {"type": "integer"},
                                 "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
                                 "ok": {"type": "boolean"}},
                  "required": ["name", "age"]}
        path = os.path.join(self.dir, "schema.json")
        with open(path, "w") as f:
            json.dump(schema, f)
        for seed in range(4):
            r = run("run", "-m", self.qwen, "-p", "A person", "--chat", "--schema", path,
                    "-n", str(400 // (seed + 1)), "--seed", str(seed), "--stats", "-t", "1")
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = json.loads(r.stdout)
            self.assertTrue(set(doc) <= set(schema["properties"]))
            self.assertIsInstance(doc["name"], str)
            self.assertIsInstance(doc["age"], int)
            self.assertTrue(all(t in ("a", "b") for t in doc.get("tags", [])))
        bad = os.path.join(self.dir, "bad.json")
        with open(bad, "w") as f:
            f.write('{"type": "string", "pattern": "^a"}')
        r = run("run", "-m", self.qwen, "-p", "x", "--schema", bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("pattern", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    def test_chat_reuses_the_cache(self):
        p = subprocess.run([BONSAI, "chat", "-m", self.qwen, "-n", "6", "--stats", "-t", "1",
                            "--seed", "3"],
                           input="Hello there\nAnd a second message\n/system Be brief.\nHi\n"
                                 "/bogus\n/exit\n",
                           capture_output=True, text=True, errors="replace", timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        import re
        turns = [tuple(map(int, m)) for m in
                 re.findall(r"prompt: (\d+) tokens, (\d+) reused, (\d+) evaluated", p.stderr)]
        self.assertEqual(len(turns), 3, p.stderr)
        (n1, r1, e1), (n2, r2, e2), (n3, r3, e3) = turns
        self.assertEqual((r1, e1), (0, n1))
        # the second turn evaluates only its own tokens (plus the last token of reply 1)
        self.assertEqual(r2 + e2, n2)
        self.assertLess(e2, 30)
        self.assertGreater(r2, n1)
        self.assertIn("unknown command /bogus", p.stderr)

    def test_perplexity(self):
        story = run("run", "-m", self.stories, "-p", "Once upon a time", "-n", "300", "--temp",
                    "0", "-c", "512")
        self.assertEqual(story.returncode, 0, story.stderr)
        path = os.path.join(self.dir, "story.txt")
        with open(path, "w") as f:
            f.write(story.stdout)
        r = run("eval", "-m", self.stories, "-f", path, "--perplexity", "-c", "64")
        self.assertEqual(r.returncode, 0, r.stderr)
        ppl = float(r.stdout.split("PPL = ")[1].split()[0])
        # the model's own greedy text is very predictable to it
        self.assertLess(ppl, 3.0, r.stdout)
        self.assertGreater(ppl, 1.0, r.stdout)

    def test_errors(self):
        self.assertEqual(run("run", "-p", "x").returncode, 2)
        self.assertEqual(run("run", "-m", self.stories).returncode, 2)
        self.assertEqual(run("run", "-m", self.stories, "-p", "x", "--top-k", "abc").returncode, 2)
        r = run("run", "-m", os.path.join(self.dir, "missing.gguf"), "-p", "x")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("bonsai run: "), r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertEqual(run("chat").returncode, 2)
        r = run("run", "-m", self.stories, "-p", "x" * 5000, "-c", "64")
        self.assertEqual(r.returncode, 1)
        self.assertIn("context", r.stderr)


class Tokenize(unittest.TestCase):
    """bonsai tokenize: ids on one line, special tokens, files, the benchmark, errors."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="bonsai-tok-")
        cls.stories = data("stories260K.gguf")
        cls.gpt2 = data("ggml-vocab-gpt-2.gguf")
        cls.qwen = os.path.join(cls.dir, "qwen3-vocab.gguf")
        r = run("synth", "--arch", "qwen3", "--shape", "tiny", "--vocab-only", "--tokenizer",
                data("qwen3-tokenizer.json"), "-o", cls.qwen)
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def ids(self, *args):
        r = run("tokenize", *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.endswith("\n"))
        self.assertEqual(len(r.stdout.splitlines()), 1, r.stdout)
        return r.stdout.strip()

    def test_stories(self):
        self.assertEqual(self.ids("-m", self.stories, "Once upon a time"), "1 403 407 261 378")
        self.assertEqual(self.ids("-m", self.stories, "--no-bos", "Once upon a time"),
                         "403 407 261 378")
        # text that starts with a dash comes after --
        self.assertNotEqual(self.ids("-m", self.stories, "--no-bos", "--", "-x"), "")

    def test_special(self):
        chat = "<|im_start|>user\nhi<|im_end|>"
        self.assertEqual(self.ids("-m", self.qwen, "--special", chat), "151644 872 198 6023 151645")
        plain = self.ids("-m", self.qwen, chat).split()
        self.assertNotIn("151644", plain)
        self.assertGreater(len(plain), 5)
        self.assertEqual(self.ids("-m", self.gpt2, "Hello world"), "15496 995")

    def test_file(self):
        path = os.path.join(self.dir, "text.bin")
        with open(path, "wb") as f:
            f.write(b"caf\xc3\xa9 \xff\xfe bytes\n")
        ids = self.ids("-m", self.gpt2, "-f", path).split()
        self.assertTrue(all(i.isdigit() for i in ids))
        self.assertGreater(len(ids), 5)
        empty = os.path.join(self.dir, "empty.txt")
        open(empty, "wb").close()
        self.assertEqual(self.ids("-m", self.gpt2, "-f", empty), "")
        self.assertEqual(self.ids("-m", self.stories, "-f", empty), "1")

    def test_bench(self):
        r = run("tokenize", "-m", self.qwen, "--bench", "The quick brown fox. " * 50)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("MB/s", r.stdout)
        self.assertIn("tokens/s", r.stdout)
        self.assertIn("vocabulary: 151669 tokens", r.stdout)

    def test_errors(self):
        self.assertEqual(run("tokenize").returncode, 2)
        self.assertEqual(run("tokenize", "-m", self.stories).returncode, 2)
        self.assertEqual(run("tokenize", "x").returncode, 2)
        self.assertEqual(run("tokenize", "-m", self.stories, "a", "b").returncode, 2)
        self.assertEqual(run("tokenize", "-m", self.stories, "--bogus", "a").returncode, 2)
        path = os.path.join(self.dir, "t.txt")
        with open(path, "w") as f:
            f.write("x")
        self.assertEqual(run("tokenize", "-m", self.stories, "-f", path, "a").returncode, 2)
        r = run("tokenize", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("SYNOPSIS\n    bonsai tokenize ", r.stdout)
        for args, needle in ((["-m", os.path.join(self.dir, "missing.gguf"), "a"], "missing.gguf"),
                             (["-m", data("hyllama-dummy.gguf"), "a"], "no tokenizer"),
                             (["-m", self.stories, "-f", os.path.join(self.dir, "nope")], "nope")):
            r = run("tokenize", *args)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertTrue(r.stderr.startswith("bonsai tokenize: "), r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn(needle, r.stderr)


# Every option of every command (all names): True when it takes a value. The help pages must list
# exactly these, and the parser must know each of them.
GENERATE_OPTIONS = {
    "-m": True, "--model": True, "-sys": True, "--system-prompt": True, "--think": False,
    "-n": True, "--n-predict": True, "--temp": True, "--top-k": True, "--top-p": True,
    "--min-p": True, "--repeat-penalty": True, "--repeat-last-n": True,
    "--presence-penalty": True, "--frequency-penalty": True, "-s": True, "--seed": True,
    "-c": True, "--ctx-size": True, "-t": True, "--threads": True, "--backend": True,
    "--cache-type-k": True, "--kv-type": True, "--json": False, "--schema": True, "-r": True,
    "--reverse-prompt": True, "--stop": True, "--stats": False,
}
OPTIONS = {
    "info": {"--no-metadata": False, "--no-tensors": False, "--backends": False},
    "quantize": {"--type": True, "--keep": False},
    "bench-kernels": {"--json": False, "--threads": True, "--isa": True, "--quick": False,
                      "--tokens": True, "--backend": True},
    "synth": {"--arch": True, "--shape": True, "--tokenizer": True, "-o": True, "--output": True,
              "--seed": True, "--tokenizer-config": True, "--vocab": True, "--vocab-only": False,
              "--threads": True},
    "eval": {"-m": True, "--model": True, "--ids": True, "--logits": True, "--all": False,
             "--perplexity": False, "-f": True, "--file": True, "-c": True, "--ctx-size": True,
             "-t": True, "--threads": True, "--backend": True},
    "bench": {"-m": True, "--model": True, "-p": True, "--n-prompt": True, "-n": True,
              "--n-gen": True, "-d": True, "--depth": True, "-r": True, "--repetitions": True,
              "-t": True, "--threads": True, "--backend": True, "--sessions": True, "--bw": True,
              "--cache-type-k": True, "--kv-type": True, "--json": False},
    "run": dict(GENERATE_OPTIONS, **{"-p": True, "--prompt": True, "-f": True, "--file": True,
                                     "--chat": False, "--special": False,
                                     "--no-display-prompt": False}),
    "chat": GENERATE_OPTIONS,
    "tokenize": {"-m": True, "--model": True, "-f": True, "--file": True, "--special": False,
                 "--no-bos": False, "--bench": False},
    "version": {},
    "help": {},
}
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES"]


def help_page(cmd):
    """The page of `bonsai help CMD` as {section: text}, checking the sections' order."""
    r = run("help", cmd)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    sections, order = {}, []
    for line in r.stdout.splitlines():
        if line and not line[0].isspace():
            order.append(line)
            sections[line] = []
        else:
            sections[order[-1]].append(line)
    expected = SECTIONS if cmd not in ("info", "quantize", "tokenize", "help") else \
        SECTIONS[:3] + ["ARGUMENTS"] + SECTIONS[3:]
    assert order == expected, (cmd, order)
    return r.stdout, {k: "\n".join(v) for k, v in sections.items()}


def option_blocks(options_text):
    """{name: (placeholder or None, help text)} for every name of every option of a page."""
    blocks, current = {}, None
    for line in options_text.splitlines():
        if line.startswith("    -"):
            words = line.strip().split(", ")
            last = words[-1].split(" ", 1)
            value = last[1] if len(last) > 1 else None
            current = words[:-1] + [last[0]]
            for name in current:
                blocks[name] = [value, ""]
        elif current and line.startswith("        "):
            for name in current:
                blocks[name][1] += " " + line.strip()
    return {k: (v[0], v[1].strip()) for k, v in blocks.items()}


class Help(unittest.TestCase):
    """bonsai help, bonsai help CMD, bonsai CMD --help: generated from the option tables."""

    def test_list(self):
        r = run("help")
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
        self.assertEqual(listed, list(OPTIONS))
        for alias in ("--help", "-h"):
            self.assertEqual(run(alias).stdout, r.stdout)
        bare = run()
        self.assertEqual(bare.returncode, 2)
        self.assertEqual(bare.stdout, "")
        self.assertEqual(bare.stderr, r.stdout)
        self.assertEqual(run("--version").stdout, run("version").stdout)

    def test_pages(self):
        for cmd, options in OPTIONS.items():
            with self.subTest(cmd=cmd):
                page, sections = help_page(cmd)
                self.assertIn(f"bonsai {cmd} - ", sections["NAME"])
                self.assertIn(f"    bonsai {cmd}", sections["SYNOPSIS"])
                self.assertGreater(len(sections["DESCRIPTION"].split()), 15)
                self.assertIn("        bonsai " + cmd, sections["EXAMPLES"])
                codes = [line.split()[0] for line in sections["EXIT STATUS"].splitlines()
                         if line.startswith("    ") and not line.startswith("     ")]
                self.assertIn("0", codes)
                self.assertIn("2", codes)
                blocks = option_blocks(sections["OPTIONS"])
                # exactly the options of the table, each with a help text, and a placeholder
                # when it takes a value
                self.assertEqual(set(blocks), set(options) | {"-h", "--help"})
                for name, takes_value in options.items():
                    value, text = blocks[name]
                    self.assertEqual(value is not None, takes_value, name)
                    self.assertTrue(text, name)
                # --help and -h print the same page
                for flag in ("--help", "-h"):
                    r = run(cmd, flag)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(r.stdout, page)
                # arguments are read in order: help before an error, an error before help
                self.assertEqual(run(cmd, "--help", "--no-such-option").stdout, page)
                self.assertEqual(run(cmd, "--no-such-option", "--help").returncode, 2)

    def test_defaults_and_ranges(self):
        def block(cmd, name):
            return option_blocks(help_page(cmd)[1]["OPTIONS"])[name][1]
        for cmd, name, text in (("run", "--temp", "default: 0.5"),
                                ("run", "--top-k", "default: 20"),
                                ("run", "--top-p", "default: 0.85"),
                                ("run", "--min-p", "default: 0"),
                                ("run", "--repeat-last-n", "default: 64"),
                                ("run", "-n", "-1 to 1073741824"),
                                ("run", "--kv-type", "one of f16, q8_0; default: f16"),
                                ("run", "--stop", "at most 16"),
                                ("chat", "-t", "0 to 1024"), ("run", "-m", "required"),
                                ("bench", "-p", "default: 512"), ("bench", "-n", "default: 128"),
                                ("bench", "-r", "1 to 1000; default: 5"),
                                ("bench", "--sessions", "up to 16 values, each 1 to 1024"),
                                ("eval", "-c", "2 to 1048576; default: 512"),
                                ("bench-kernels", "--tokens", "2 to 4096; default: 512"),
                                ("synth", "--shape", "one of tiny, 1.7b, 4b, 8b"),
                                ("synth", "--seed", "default: 0"),
                                ("quantize", "--type", "required; one of q1_0")):
            with self.subTest(cmd=cmd, name=name):
                self.assertIn(text, block(cmd, name))

    def test_unknown(self):
        for args in (["help", "no-such-command"], ["help", "run", "chat"], ["no-such-command"],
                     ["help", "\x1b[2J"]):
            r = run(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertEqual(r.stdout, "")
            self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
            self.assertNotIn("\x1b", r.stderr)
        self.assertIn("unknown command 'no-such-command'",
                      run("help", "no-such-command").stderr)


class Usage(unittest.TestCase):
    """Usage errors: exit status 2, nothing on stdout, one line on stderr naming what is wrong."""

    def usage_error(self, cmd, *args, needle=None):
        r = run(cmd, *args)
        self.assertEqual(r.returncode, 2, (cmd, args, r.stderr))
        self.assertEqual(r.stdout, "", (cmd, args))
        self.assertEqual(len(r.stderr.splitlines()), 1, (cmd, args, r.stderr))
        self.assertTrue(r.stderr.startswith(f"bonsai {cmd}: "), r.stderr)
        if needle:
            self.assertIn(needle, r.stderr, (cmd, args))
        return r.stderr

    def test_unknown_option(self):
        for cmd in OPTIONS:
            self.usage_error(cmd, "--no-such-option", "x",
                             needle="unknown option '--no-such-option'")
            self.usage_error(cmd, "-Z", needle="'-Z'")

    def test_missing_value(self):
        # the value is missing when the option is last: every name of every option is known
        for cmd, options in OPTIONS.items():
            for name, takes_value in options.items():
                if takes_value:
                    self.usage_error(cmd, name, needle=f"missing value for {name}")
                elif name.startswith("--"):
                    self.usage_error(cmd, name + "=1", needle=f"{name} takes no value")

    def test_bad_values(self):
        m = ["-m", "model.gguf"]
        for cmd, args, needle in (
                ("run", m + ["-p", "x", "-n", "-2"], "bad value '-2' for -n"),
                ("run", m + ["-p", "x", "--n-predict", "1073741825"], "for --n-predict"),
                ("run", m + ["-p", "x", "--top-k", "abc"], "bad value 'abc' for --top-k"),
                ("run", m + ["-p", "x", "--top-k", "-1"], "for --top-k"),
                ("run", m + ["-p", "x", "--temp", "nan"], "bad value 'nan' for --temp"),
                ("run", m + ["-p", "x", "--temp", "inf"], "for --temp"),
                ("run", m + ["-p", "x", "--top-p", "0.5x"], "for --top-p"),
                ("run", m + ["-p", "x", "--repeat-last-n", "-2"], "for --repeat-last-n"),
                ("run", m + ["-p", "x", "-c", "1048577"], "for -c"),
                ("run", m + ["-p", "x", "--seed", "-1"], "bad value '-1' for --seed"),
                ("run", m + ["-p", "x", "-s", "18446744073709551616"], "for -s"),
                ("run", m + ["-p", "x", "--kv-type", "q4_0"], "expected one of f16, q8_0"),
                ("chat", m + ["-t", "1025"], "bad value '1025' for -t"),
                ("chat", m + ["--threads", " 4"], "for --threads"),
                ("chat", m + ["--cache-type-k", "bf16"], "for --cache-type-k"),
                ("eval", m + ["--ids", "1", "-c", "1"], "bad value '1' for -c"),
                ("eval", m + ["--ids", "1", "-t", "-1"], "for -t"),
                ("eval", m + ["--ids", "1 -5"], "--ids"),
                ("bench", m + ["-r", "0"], "bad value '0' for -r"),
                ("bench", m + ["-p", "65537"], "for -p"),
                ("bench", m + ["-n", "x"], "for -n"),
                ("bench", m + ["--sessions", "0"], "for --sessions"),
                ("bench", m + ["--sessions", "1,,4"], "for --sessions"),
                ("bench", m + ["--sessions", ",".join(["1"] * 17)], "up to 16"),
                ("bench", m + ["-p", "0", "-n", "0"], "nothing to do"),
                ("bench-kernels", ["--threads", "0"], "bad value '0' for --threads"),
                ("bench-kernels", ["--threads", "257"], "1 to 256"),
                ("bench-kernels", ["--tokens", "1"], "for --tokens"),
                ("synth", ["--threads", "300"], "for --threads"),
                ("synth", ["--seed", "x"], "bad value 'x' for --seed"),
                ("synth", ["--shape", "2b"], "expected one of tiny, 1.7b, 4b, 8b"),
                ("synth", ["--arch", "llama"], "bad value 'llama' for --arch"),
                ("quantize", ["a", "b", "--type", "q4_0"], "bad value 'q4_0' for --type"),
                ("info", ["a.gguf", "b.gguf"], "unexpected argument 'b.gguf'"),
                ("info", ["--backends", "a.gguf"], "--backends"),
                ("info", [], "missing MODEL.gguf"),
                ("quantize", ["a", "--type", "q1_0"], "missing OUT.gguf"),
                ("quantize", ["a", "b"], "missing required option --type"),
                ("tokenize", ["x"], "missing required option --model MODEL"),
                ("tokenize", m + ["a", "b"], "unexpected argument 'b'"),
                ("tokenize", m, "missing TEXT or -f FILE"),
                ("run", m, "missing -p PROMPT or -f FILE"),
                ("run", m + ["-p", "x", "--json", "--schema", "s.json"], "exclude"),
                ("version", ["extra"], "unexpected argument 'extra'"),
                ("help", ["run", "chat"], "unexpected argument 'chat'")):
            with self.subTest(cmd=cmd, args=args):
                self.usage_error(cmd, *args, needle=needle)

    def test_stop_capacity(self):
        stops = [a for i in range(17) for a in ("--stop", f"s{i}")]
        self.usage_error("run", "-m", "m.gguf", "-p", "x", *stops, needle="at most 16")

    def test_hostile_values_stay_on_one_line(self):
        err = self.usage_error("run", "-m", "m", "-p", "x", "--top-k", "1\n\x1b[31m2" + "9" * 200)
        self.assertNotIn("\x1b", err)
        self.assertIn("\\x0a\\x1b[31m2", err)
        self.assertLess(len(err), 200)


class Parser(unittest.TestCase):
    """The syntax the parser accepts, through commands that run."""

    @classmethod
    def setUpClass(cls):
        cls.stories = data("stories260K.gguf")

    def test_forms(self):
        base = run("run", "-m", self.stories, "-p", "Once upon a time", "-n", "12", "--temp", "0")
        self.assertEqual(base.returncode, 0, base.stderr)
        for args in (["--model=" + self.stories, "--prompt=Once upon a time", "--n-predict=12",
                      "--temp=0"],
                     # options in any order; a repeated option: the last one counts
                     ["--temp", "1", "-n", "3", "-p", "Once upon a time", "-m", self.stories,
                      "-n", "12", "--temp", "0"],
                     ["-m", self.stories, "-p", "Once upon a time", "-n", "12", "--temp", "-1",
                      "--kv-type", "F16", "--repeat-last-n", "-1"]):
            r = run("run", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, base.stdout, args)
        # a value that looks like an option is a value
        r = run("run", "-m", self.stories, "-p", "--help", "-n", "1", "--temp", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("--help"), r.stdout)
        # options after the file, and "--"
        r = run("info", self.stories, "--no-metadata", "--no-tensors")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 10, r.stdout)
        r = run("info", "--no-tensors", "--", "--no-metadata")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--no-metadata", r.stderr)

    def test_sessions_list(self):
        import json
        r = run("bench", "-m", self.stories, "-p", "0", "-n", "4", "-r", "1", "--sessions",
                "1, 3", "--json", "-t", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([row.get("sessions") for row in rows], [None, 1, 3])


class Progress(unittest.TestCase):
    """Progress bars on standard error when it is a terminal, never otherwise."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="bonsai-progress-")
        cls.stories = data("stories260K.gguf")
        cls.story = os.path.join(cls.dir, "story.txt")
        r = run("run", "-m", cls.stories, "-p", "Once upon a time", "-n", "300", "--temp", "0",
                "-c", "512")
        assert r.returncode == 0, r.stderr
        with open(cls.story, "w") as f:
            f.write(r.stdout)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def bar(self, label, args, pty_stdout=False):
        code, shown, out = run_pty(*args, stdout_pty=pty_stdout)
        self.assertEqual(code, 0, shown)
        self.assertIn(f"\r{label} [", shown)
        self.assertIn(f"\r{label} [{'#' * 30}] 100%", shown)
        # and none when standard error is not a terminal
        r = run(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\r", r.stderr)
        self.assertNotIn(f"{label} [", r.stderr)
        return shown, out, r

    def test_model_load(self):
        m = self.stories
        for args in (["info", "--no-metadata", "--no-tensors", m],
                     ["run", "-m", m, "-p", "Once", "-n", "4", "--temp", "0"],
                     ["eval", "-m", m, "--ids", "1 403"],
                     ["bench", "-m", m, "-p", "4", "-n", "2", "-r", "1", "-t", "1"],
                     ["tokenize", "-m", m, "Once"]):
            with self.subTest(cmd=args[0]):
                shown, out, plain = self.bar("load", args)
                if args[0] != "bench":  # (times differ)
                    self.assertEqual(out, plain.stdout)
                self.assertEqual(plain.stderr, "")
        # chat loads too (its messages from a pipe)
        shown, out, _ = self.bar("load", ["chat", "-m", m, "-n", "2", "--seed", "1"])

    def test_not_when_only_stdout_is_a_terminal(self):
        import pty
        master, slave = pty.openpty()
        p = subprocess.run([BONSAI, "info", "--no-metadata", "--no-tensors", self.stories],
                           stdout=slave, stderr=subprocess.PIPE, timeout=120)
        os.close(slave)
        os.close(master)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(p.stderr, b"")

    def test_perplexity(self):
        args = ["eval", "-m", self.stories, "-f", self.story, "--perplexity", "-c", "64"]
        shown, out, plain = self.bar("perplexity", args)
        import re
        def untimed(text):
            return re.sub(r"scored, [0-9.]+ s\)", "scored)", text)
        self.assertEqual(untimed(out), untimed(plain.stdout))  # the per-chunk line as it comes
        self.assertIn("[1]", out)
        self.assertIn("\rperplexity [#######", shown)  # 25%: one chunk of four
        # both on one terminal: the per-chunk line comes after the bar
        code, shown, _ = run_pty(*args, stdout_pty=True)
        self.assertEqual(code, 0, shown)
        self.assertLess(shown.index(f"perplexity [{'#' * 30}] 100%"), shown.index("[1]"))
        self.assertIn("PPL = ", shown)

    def test_quantize(self):
        out = os.path.join(self.dir, "q.gguf")
        self.bar("quantize", ["quantize", self.stories, out, "--type", "q1_0", "--keep"])

    def test_synth(self):
        out = os.path.join(self.dir, "tiny.gguf")
        self.bar("synth", ["synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer",
                           data("qwen3-tokenizer.json"), "-o", out, "--threads", "2"])


if __name__ == "__main__":
    BONSAI = sys.argv.pop(1)
    unittest.main(verbosity=2)
