#!/usr/bin/env python3
"""The Python examples (examples/bench.py, chat.py, rag.py) run on small models; what they
print is checked against the binding used directly.

    test_examples.py bench|chat|rag
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import unittest

import _util

import libbonsai


def run_example(name, *args, stdin=None):
    script = os.path.join(_util.EXAMPLES_DIR, name + ".py")
    proc = subprocess.run([sys.executable, script, *args], input=stdin, capture_output=True,
                          text=True, timeout=240)
    if proc.returncode != 0:
        raise AssertionError("%s.py exited with %d\nstdout:\n%s\nstderr:\n%s" % (
            name, proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout, proc.stderr


class BenchTest(unittest.TestCase):
    def test_bench(self):
        model = _util.stories()
        out, _ = run_example("bench", model, "-p", "24", "-n", "12", "-r", "3")
        lines = out.splitlines()
        self.assertIn("stories260K.gguf (llama, 292800 parameters", lines[0])
        runs = [l for l in lines if re.match(r"^\d+\s", l)]
        self.assertEqual(len(runs), 3)
        gen_tps = []
        for line in runs:
            _, n_prompt, prompt_tps, n_gen, tps = line.split()
            self.assertEqual((int(n_prompt), int(n_gen)), (24, 12))
            self.assertGreater(float(prompt_tps), 0)
            gen_tps.append(float(tps))
        median = [l for l in lines if l.startswith("median")]
        self.assertEqual(len(median), 1)
        self.assertAlmostEqual(float(median[0].split()[-1]), statistics.median(gen_tps),
                               delta=0.051)
        # JSON output, on the Qwen3-shaped model (eos banned: always -n tokens)
        out, _ = run_example("bench", _util.qwen3_tiny(), "-p", "8", "-n", "6", "-r", "2",
                             "--json", "--no-warmup")
        result = json.loads(out)
        self.assertEqual(len(result["runs"]), 2)
        self.assertTrue(all(r["gen_tokens"] == 6 and r["prompt_tokens"] == 8
                            for r in result["runs"]))
        self.assertEqual(result["median_gen_tps"],
                         statistics.median(r["gen_tps"] for r in result["runs"]))
        self.assertEqual(result["architecture"], "qwen3")


class ChatTest(unittest.TestCase):
    def test_chat(self):
        path = _util.qwen3_tiny()
        out, err = run_example("chat", path, "-n", "8", "--temp", "0", "--stats",
                               "--system", "Be terse.",
                               stdin="Hello\n\n/reset\nHi there\n/exit\nnever read\n")
        # the same conversations through the binding
        with libbonsai.Model(path, progress=False) as m:
            with m.chat(system="Be terse.") as chat:
                first = chat.ask("Hello", max_tokens=8, temperature=0)
            with m.chat(system="Be terse.") as chat:
                second = chat.ask("Hi there", max_tokens=8, temperature=0)
        self.assertEqual(out, "%s\n(conversation reset)\n%s\n" % (first, second))
        stats = [l for l in err.splitlines() if l.startswith("[")]
        self.assertEqual(len(stats), 2, err)
        self.assertIn("8 generated", stats[0])
        self.assertIn("stop: max_tokens", stats[0])
        # end of input ends the session too
        out, _ = run_example("chat", path, "-n", "4", "--temp", "0", stdin="Hello\n")
        self.assertEqual(out.count("\n"), 1)


class RagTest(unittest.TestCase):
    DOCS = {
        "rivers.txt": "The Nile and the Amazon are the longest rivers on Earth.\n\n"
                      "Rivers carry water from mountains down to the sea.",
        "cats.txt": "Cats sleep for most of the day and hunt at night.",
        "space.txt": "The Moon orbits the Earth once every twenty-seven days.\n\n"
                     "Saturn has bright rings made of ice.",
        "notes.md": "Not a .txt file: never retrieved.",
    }

    def test_rag(self):
        path = _util.qwen3_tiny()
        question = "Saturn has bright rings made of ice."
        with tempfile.TemporaryDirectory() as docs:
            for name, text in self.DOCS.items():
                with open(os.path.join(docs, name), "w") as f:
                    f.write(text)
            out, err = run_example("rag", path, "--docs", docs, "-q", question, "-k", "3",
                                   "-n", "8")
        lines = out.splitlines()
        self.assertEqual(lines[0], "retrieved (cosine similarity):")
        hits = [re.match(r"^\s+(\d)\. (-?\d\.\d{4})  (\S+): (.*)$", l) for l in lines[1:4]]
        self.assertTrue(all(hits), lines)
        # the passage identical to the question comes first, with similarity 1
        self.assertEqual(hits[0].group(3), "space.txt#2")
        self.assertEqual(hits[0].group(2), "1.0000")
        scores = [float(h.group(2)) for h in hits]
        self.assertEqual(scores, sorted(scores, reverse=True))
        # the other scores are the binding's own cosine similarities
        with libbonsai.Model(path, progress=False) as m:
            q = m.embed(question)
            texts = {"rivers.txt#1": self.DOCS["rivers.txt"].split("\n\n")[0],
                     "rivers.txt#2": self.DOCS["rivers.txt"].split("\n\n")[1],
                     "cats.txt#1": self.DOCS["cats.txt"],
                     "space.txt#1": self.DOCS["space.txt"].split("\n\n")[0],
                     "space.txt#2": self.DOCS["space.txt"].split("\n\n")[1]}
            want = sorted(((sum(a * b for a, b in zip(q, m.embed(t))), label)
                           for label, t in texts.items()), reverse=True)[:3]
        self.assertEqual([h.group(3) for h in hits], [label for _, label in want])
        for h, (score, _) in zip(hits, want):
            self.assertAlmostEqual(float(h.group(2)), score, delta=6e-5)
        self.assertNotIn("notes.md", out)
        self.assertEqual(lines[4], "answer:")
        self.assertRegex(err, r"\[\d+ prompt tokens, 8 generated")


if __name__ == "__main__":
    which = sys.argv[1:] or ["bench", "chat", "rag"]
    sys.argv[1:] = [{"bench": "BenchTest", "chat": "ChatTest", "rag": "RagTest"}[w]
                    for w in which]
    _util.main()
