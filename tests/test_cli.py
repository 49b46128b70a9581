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


if __name__ == "__main__":
    BONSAI = sys.argv.pop(1)
    unittest.main(verbosity=2)
