#!/usr/bin/env python3
"""Sessions and generation: greedy decoding of the real stories260K model (against a greedy
loop over eval/logits), stop strings, prefix reuse, sampler settings, custom stages, JSON mode and
JSON Schema on the tiny Qwen3 model."""
import array
import gc
import json
import unittest

import _util

import libbonsai
from libbonsai import StopReason


def argmax(row):
    best = 0
    for i in range(1, len(row)):
        if row[i] > row[best]:
            best = i
    return best


class StoriesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libbonsai.Model(_util.stories(), progress=False)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def test_greedy_lily(self):
        m = self.model
        gen = m.generate("Once upon a time", max_tokens=24, temperature=0)
        pieces = list(gen)
        text = "".join(pieces)
        self.assertTrue(text.startswith(_util.LILY), repr(text))
        self.assertEqual(text, gen.text)
        self.assertTrue(all(pieces))  # no empty pieces
        st = gen.stats
        self.assertEqual(st.n_prompt, len(m.tokenize("Once upon a time")))
        self.assertEqual(st.n_generated, 24)
        self.assertEqual(len(gen.tokens), 24)
        self.assertEqual(st.stop_reason, StopReason.MAX_TOKENS)
        self.assertGreater(st.generate_tps, 0)
        self.assertEqual(m.detokenize(gen.tokens, continuation=True), text)
        self.assertTrue(all(lp <= 0 for lp in gen.logprobs))
        self.assertEqual(m.complete("Once upon a time", max_tokens=24, temperature=0), text)

    def test_greedy_matches_eval_loop(self):
        """bonsai_generate through the iterator == argmax over Session.eval/logits."""
        m = self.model
        prompt = m.tokenize("Once upon a time")
        with m.session(n_ctx=128) as s:
            self.assertIsNone(s.logits)
            s.eval(prompt)
            self.assertEqual(s.n_past, len(prompt))
            self.assertEqual(s.tokens, prompt)
            manual = []
            for _ in range(16):
                row = s.logits
                self.assertIsInstance(row, array.array)
                self.assertEqual(len(row), m.n_vocab)
                tok = argmax(row)
                manual.append(tok)
                s.eval([tok])
            gen = s.generate(prompt, max_tokens=16, temperature=0)
            text = gen.result()
            self.assertEqual(gen.tokens, manual)
            self.assertEqual(text, m.detokenize(manual, continuation=True))
            # the cache held prompt + 16 tokens: the prompt is reused but its last token
            self.assertEqual(gen.stats.n_prompt_reused, len(prompt) - 1)
            self.assertEqual(s.last_stats, gen.stats)
            # the cache holds prompt and output but the last token
            self.assertEqual(s.tokens, prompt + manual[:-1])

    def test_all_logits_truncate_clear(self):
        m = self.model
        prompt = m.tokenize("Once upon a time there was")
        with m.session(n_ctx=64) as a, m.session(n_ctx=64) as b:
            a.eval(prompt, all_logits=True)
            rows = a.all_logits
            self.assertEqual(len(rows), len(prompt))
            for i in (1, len(prompt) - 1):
                b.clear()
                b.eval(prompt[:i + 1])
                self.assertEqual(len(b.all_logits), 1)
                for x, y in zip(rows[i], b.logits):
                    self.assertAlmostEqual(x, y, delta=1e-3)
            self.assertEqual(list(a.logits), list(rows[-1]))
            a.truncate(3)
            self.assertEqual(a.n_past, 3)
            self.assertIsNone(a.logits)
            self.assertEqual(a.tokens, prompt[:3])
            with self.assertRaises(libbonsai.OutOfRangeError):
                a.truncate(10)
            a.clear()
            self.assertEqual(a.n_past, 0)
            self.assertEqual(a.tokens, [])
            self.assertIn("cpu", a.backend)
            with self.assertRaises(libbonsai.OutOfRangeError):
                a.eval([m.n_vocab])

    def test_batch_eval(self):
        """One forward pass for several sessions gives each the logits of its own eval."""
        m = self.model
        prompts = [m.tokenize("Once upon a time"), m.tokenize("The dog ran"),
                   m.tokenize("Lily")]
        nxt = [m.tokenize(w, add_bos=False)[0] for w in ("girl", "fast", "was")]
        sessions = [m.session(n_ctx=32) for _ in prompts]
        alone = [m.session(n_ctx=32) for _ in prompts]
        try:
            for s, a, p in zip(sessions, alone, prompts):
                s.eval(p)
                a.eval(p)
            libbonsai.batch_eval(list(zip(sessions, nxt)))
            for s, a, p, t in zip(sessions, alone, prompts, nxt):
                a.eval([t])
                self.assertEqual(s.tokens, p + [t])
                for x, y in zip(s.logits, a.logits):
                    self.assertAlmostEqual(x, y, delta=1e-3)
            with self.assertRaises(libbonsai.InvalidArgumentError):
                libbonsai.batch_eval([(sessions[0], 1), (sessions[0], 2)])
            with self.assertRaises(libbonsai.OutOfRangeError):
                libbonsai.batch_eval([(sessions[0], 1), (sessions[1], m.n_vocab)])
            self.assertEqual(sessions[0].n_past, len(prompts[0]) + 1)  # nothing evaluated
        finally:
            for s in sessions + alone:
                s.close()

    def test_batch_sample(self):
        """Sampling several sessions at once gives each what its sampler gives it alone."""
        m = self.model
        sessions = [m.session(n_ctx=32) for _ in range(3)]
        try:
            for i, s in enumerate(sessions):
                s.eval(m.tokenize(["Once upon a time", "The dog ran", "Lily"][i]))
            batch = [libbonsai.Sampler.default(seed=7 + i, temperature=1.2) for i in range(3)]
            twins = [libbonsai.Sampler.default(seed=7 + i, temperature=1.2) for i in range(3)]
            got = libbonsai.batch_sample(list(zip(sessions, batch)))
            self.assertEqual(got, [t.sample(s) for s, t in zip(sessions, twins)])
            with self.assertRaises(libbonsai.InvalidArgumentError):
                libbonsai.batch_sample([(sessions[0], batch[0]), (sessions[1], batch[0])])
            fresh = m.session(n_ctx=8)
            with self.assertRaises(libbonsai.InvalidStateError):
                libbonsai.batch_sample([(sessions[0], batch[0]), (fresh, batch[1])])
            fresh.close()
            # refused before anything was sampled: still in step with the twins
            got = libbonsai.batch_sample(list(zip(sessions, batch)))
            self.assertEqual(got, [t.sample(s) for s, t in zip(sessions, twins)])
            # a stage that raises on the second item: the first was taken, the rest were not
            def boom(candidates, history):
                raise ValueError("no")
            failing = libbonsai.Sampler().add_custom(boom).add_greedy()
            with self.assertRaises(ValueError) as caught:
                libbonsai.batch_sample([(sessions[0], batch[0]), (sessions[1], failing),
                                        (sessions[2], batch[2])])
            results = caught.exception.results
            self.assertEqual(results[0], twins[0].sample(sessions[0]))
            self.assertEqual(results[1:], [None, None])
            self.assertEqual(batch[2].sample(sessions[2]), twins[2].sample(sessions[2]))
        finally:
            for s in sessions:
                s.close()

    def test_backends(self):
        """Every usable backend tells the story; an unusable one is refused with its reason."""
        infos = libbonsai.backends()
        self.assertIn("cpu", [b.name for b in infos])
        for info in infos:
            with self.subTest(backend=info.name):
                if info.usable:
                    text = self.model.complete("Once upon a time", max_tokens=12, temperature=0,
                                               backend=info.name, n_ctx=64)
                    self.assertTrue(text.startswith(_util.LILY[:20]), repr(text))
                else:
                    self.assertTrue(info.reason)
                    with self.assertRaises(libbonsai.BonsaiError) as cm:
                        self.model.session(backend=info.name)
                    self.assertIn(info.reason, cm.exception.message)
        with self.assertRaises(libbonsai.UnsupportedError):
            self.model.session(backend="no-such-backend")

    def test_generate_from_tokens_and_stop(self):
        m = self.model
        with m.session(n_ctx=128) as s:
            gen = s.generate(m.tokenize("Once upon a time"), max_tokens=40, temperature=0,
                             stop=["Lily"])
            text = gen.result()
            self.assertEqual(text, _util.LILY[:_util.LILY.index("Lily")])
            self.assertEqual(gen.stats.stop_reason, StopReason.STRING)
            gen = s.generate("Once upon a time", max_tokens=40, temperature=0,
                             stop=["zzz", "girl"])
            self.assertEqual(gen.result(), ", there was a little ")

    def test_sampling_settings(self):
        m = self.model
        kw = dict(max_tokens=30, temperature=0.9, top_k=20, top_p=0.9, min_p=0.02,
                  repeat_penalty=1.1, penalty_last_n=32, frequency_penalty=0.1,
                  presence_penalty=0.1)
        a = m.complete("Once upon a time", seed=1234, **kw)
        b = m.complete("Once upon a time", seed=1234, **kw)
        self.assertEqual(a, b)  # seeded: reproducible
        # settings reach the library: invalid ones are refused by it, with its message
        for bad in (dict(top_p=0.0), dict(repeat_penalty=-1.0), dict(temperature=float("nan")),
                    dict(min_p=2.0), dict(penalty_last_n=-5)):
            with self.subTest(**bad):
                with self.assertRaises(libbonsai.InvalidArgumentError) as cm:
                    m.generate("Once", **bad)
                self.assertNotEqual(cm.exception.message, cm.exception.status_name)
        with self.assertRaises(TypeError):
            m.generate("Once", temprature=0.5)

    def test_logit_bias(self):
        m = self.model
        with m.session(n_ctx=64) as s:
            first = s.generate("Once upon a time", max_tokens=1, temperature=0)
            first.result()
            comma = first.tokens[0]
            gen = s.generate("Once upon a time", max_tokens=3, temperature=0,
                             logit_bias={comma: float("-inf")})
            gen.result()
            self.assertNotEqual(gen.tokens[0], comma)
            # a positive bias forces a token
            gen = s.generate("Once upon a time", max_tokens=3, temperature=0,
                             logit_bias=[(m.tokenize("dog", add_bos=False)[0], 100.0)])
            gen.result()
            self.assertEqual(gen.tokens, [m.tokenize("dog", add_bos=False)[0]] * 3)

    def test_sampler_objects(self):
        m = self.model
        prompt = m.tokenize("Once upon a time")
        greedy = m.generate(prompt, max_tokens=12, temperature=0)
        greedy.result()
        # the library's default chain at temperature 0, by hand over eval + sample
        with m.session(n_ctx=64) as s, libbonsai.Sampler.default(temperature=0) as smp:
            s.eval(prompt)
            toks = []
            for _ in range(12):
                tok, logprob = s.sample(smp)
                self.assertLessEqual(logprob, 0)
                toks.append(tok)
                s.eval([tok])
            self.assertEqual(toks, greedy.tokens)
            # the same sampler from a logits copy
            smp.reset()
            s.clear()
            s.eval(prompt)
            self.assertEqual(smp.sample(s.logits)[0], greedy.tokens[0])
            self.assertEqual(smp.sample(list(s.logits))[0], greedy.tokens[0])
        # a chain passed as sampler=
        with libbonsai.Sampler(seed=5).add_top_k(1).add_dist() as smp:
            gen = m.generate(prompt, max_tokens=12, sampler=smp)
            gen.result()
            self.assertEqual(gen.tokens, greedy.tokens)
            with self.assertRaises(TypeError):
                m.generate(prompt, sampler=smp, temperature=0)

    def test_custom_stage_and_gc(self):
        """A custom stage bans the greedy first token; the stage's function is referenced only
        by the sampler and gc.collect() runs inside it at every token."""
        m = self.model
        prompt = m.tokenize("Once upon a time")
        ref = m.generate(prompt, max_tokens=1, temperature=0)
        ref.result()
        banned = ref.tokens[0]
        want = m.generate(prompt, max_tokens=10, temperature=0,
                          logit_bias={banned: float("-inf")})
        want.result()
        calls = []

        def make_sampler():
            def stage(cands, history):
                gc.collect()
                calls.append(len(history))
                for d in cands.data:
                    if d.id == banned:
                        d.logit = float("-inf")
                return True
            return libbonsai.Sampler(0).add_custom(stage).add_greedy()

        gen = m.generate(prompt, max_tokens=10, sampler=make_sampler())
        gc.collect()
        pieces = []
        for piece in gen:
            gc.collect()
            pieces.append(piece)
        self.assertEqual(gen.tokens, want.tokens)
        self.assertEqual(len(calls), 10)
        self.assertEqual(calls, list(range(10)))  # history: the generated tokens so far

    def test_custom_stage_errors(self):
        m = self.model

        class Boom(Exception):
            pass

        def stage(cands, history):
            if len(history) == 2:
                raise Boom("raised in the stage")
            return True

        smp = libbonsai.Sampler(0).add_custom(stage).add_greedy()
        gen = m.generate("Once upon a time", max_tokens=10, sampler=smp)
        with self.assertRaises(Boom) as cm:
            for _ in gen:
                pass
        self.assertIsInstance(cm.exception.__cause__, libbonsai.AbortedError)
        self.assertEqual(len(gen.tokens), 2)
        # returning False aborts sampling: the library's AbortedError
        smp = libbonsai.Sampler(0).add_custom(lambda c, h: False).add_greedy()
        with self.assertRaises(libbonsai.AbortedError):
            m.complete("Once upon a time", max_tokens=5, sampler=smp)
        # selecting from a custom stage
        def pick_last(cands, history):
            cands.selected = len(cands) - 1
        smp = libbonsai.Sampler(0).add_custom(pick_last)
        gen = m.generate("Once upon a time", max_tokens=3, sampler=smp)
        gen.result()
        self.assertEqual(len(gen.tokens), 3)


def validate(doc, schema, path="$"):
    """The JSON Schema subset the library supports, checked independently."""
    t = schema.get("type")
    if "enum" in schema:
        assert doc in schema["enum"], (path, doc)
    if t == "object":
        assert isinstance(doc, dict), (path, doc)
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in doc, (path, "missing", key)
        for key, value in doc.items():
            assert key in props, (path, "unexpected key", key)
            validate(value, props[key], path + "." + key)
    elif t == "array":
        assert isinstance(doc, list), (path, doc)
        for i, item in enumerate(doc):
            validate(item, schema.get("items", {}), "%s[%d]" % (path, i))
    elif t == "string":
        assert isinstance(doc, str), (path, doc)
    elif t == "integer":
        assert isinstance(doc, int) and not isinstance(doc, bool), (path, doc)
    elif t == "number":
        assert isinstance(doc, (int, float)) and not isinstance(doc, bool), (path, doc)
    elif t == "boolean":
        assert isinstance(doc, bool), (path, doc)
    elif t == "null":
        assert doc is None, (path, doc)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "member": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
                    "required": ["city"]},
    },
    "required": ["name", "age", "color", "address"],
}


class JsonTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libbonsai.Model(_util.qwen3_tiny(), progress=False)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def test_json_mode(self):
        m = self.model
        with m.session(n_ctx=256) as s:
            for seed in (1, 2, 3):
                with self.subTest(seed=seed):
                    gen = s.generate("Reply with a JSON object:", json=True, seed=seed,
                                     max_tokens=48, temperature=1.0)
                    text = gen.result()
                    doc = json.loads(text)
                    self.assertIsInstance(doc, dict)
                    self.assertIn(gen.stats.stop_reason, (StopReason.CONSTRAINT, StopReason.EOG))
                    self.assertLessEqual(gen.stats.n_generated, 48)

    def test_unconstrained_is_not_json(self):
        # the random-weights model does not write JSON by itself: the constraint does the work
        text = self.model.complete("Reply with a JSON object:", max_tokens=24, temperature=0)
        with self.assertRaises(ValueError):
            json.loads(text)

    def test_schema(self):
        m = self.model
        with m.session(n_ctx=512) as s:
            for i, schema in enumerate((SCHEMA, json.dumps(SCHEMA))):
                for seed in (7, 8):
                    with self.subTest(schema_as=type(schema).__name__, seed=seed):
                        gen = s.generate("A person as JSON:", schema=schema, seed=seed,
                                         temperature=0.8, max_tokens=160)
                        doc = json.loads(gen.result())
                        validate(doc, SCHEMA)
            # greedy too, and a small token budget still closes the document
            gen = s.generate("A person as JSON:", schema=SCHEMA, temperature=0, max_tokens=60)
            doc = json.loads(gen.result())
            validate(doc, SCHEMA)
            self.assertLessEqual(gen.stats.n_generated, 60)

    def test_schema_errors(self):
        m = self.model
        with self.assertRaises(libbonsai.UnsupportedError) as cm:
            m.generate("x", schema={"type": "string", "pattern": "a+"})
        self.assertIn("pattern", cm.exception.message)
        with self.assertRaises(libbonsai.BonsaiError):
            m.generate("x", schema="{not json")
        with self.assertRaises(TypeError):
            m.generate("x", schema=42)


if __name__ == "__main__":
    _util.main()
