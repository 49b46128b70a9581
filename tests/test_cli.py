#!/usr/bin/env python3
"""`bonsai info` on real files and on broken ones: right output, clean failures, never a crash."""
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
        self.assertIn("usage: bonsai info", r.stdout)
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

    def test_bad_arguments(self):
        out = os.path.join(self.dir, "bad.gguf")
        base = ["synth", "--tokenizer", self.tokenizer, "-o", out]
        for args in ([], ["--arch", "qwen3"], base + ["--arch", "qwen3"],
                     base + ["--shape", "tiny"], base + ["--arch", "llama", "--shape", "tiny"],
                     base + ["--arch", "qwen3", "--shape", "2b"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--seed", "x"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--seed", "-1"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--threads", "0"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--bogus"],
                     base + ["--arch", "qwen3", "--shape", "tiny", "--seed"],
                     ["synth", "--arch", "qwen3", "--shape", "tiny", "--tokenizer",
                      self.tokenizer]):
            r = run(*args)
            self.assertEqual(r.returncode, 2, args)
        self.assertFalse(os.path.exists(out))
        r = run("synth", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: bonsai synth", r.stdout)

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
        self.assertIn("usage: bonsai tokenize", r.stdout)
        for args, needle in ((["-m", os.path.join(self.dir, "missing.gguf"), "a"], "missing.gguf"),
                             (["-m", data("hyllama-dummy.gguf"), "a"], "no tokenizer"),
                             (["-m", self.stories, "-f", os.path.join(self.dir, "nope")], "nope")):
            r = run("tokenize", *args)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertTrue(r.stderr.startswith("bonsai tokenize: "), r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn(needle, r.stderr)


if __name__ == "__main__":
    BONSAI = sys.argv.pop(1)
    unittest.main(verbosity=2)
