#!/usr/bin/env python3
"""The generation iterator's worker thread: early close cancels and joins, the session is usable
afterwards, one user of a session at a time, errors of the C side raised in the consumer with the
library's message, callbacks kept alive across gc.collect(), the GIL released during compute."""
import gc
import threading
import time
import unittest

import _util

import libbonsai
from libbonsai import StopReason


def workers():
    return [t for t in threading.enumerate() if t.name == "libbonsai-generate"]


class CancelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libbonsai.Model(_util.stories(), progress=False)
        cls.eos = cls.model.eos

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def endless(self, session):
        """A generation that would run until the context is full (EOS banned, no limit), at
        most 500 tokens/s: it cannot end by itself before the test stops it."""
        sampler = (libbonsai.Sampler(0).add_custom(lambda c, h: time.sleep(0.002))
                   .add_logit_bias({self.eos: float("-inf")}).add_greedy())
        return session.generate("Once upon a time", max_tokens=0, sampler=sampler)

    def assert_lily(self, session):
        text = session.complete("Once upon a time", max_tokens=12, temperature=0)
        self.assertTrue(text.startswith(_util.LILY[:20]), repr(text))

    def test_break_cancels(self):
        with self.model.session(n_ctx=2048) as s:
            for i, piece in enumerate(self.endless(s)):
                if i == 2:
                    break
            # the iterator was the loop's only reference: dropping it closed it
            self.assertEqual(workers(), [])
            st = s.last_stats
            self.assertEqual(st.stop_reason, StopReason.CANCELLED)
            self.assertLess(st.n_generated, 2000)
            self.assert_lily(s)

    def test_close_and_with(self):
        with self.model.session(n_ctx=2048) as s:
            gen = self.endless(s)
            self.assertTrue(next(gen))
            gen.close()
            gen.close()
            self.assertEqual(workers(), [])
            self.assertEqual(gen.stats.stop_reason, StopReason.CANCELLED)
            with self.assertRaises(StopIteration):
                next(gen)
            with self.endless(s) as gen:
                next(gen)
                next(gen)
            self.assertEqual(workers(), [])
            self.assertEqual(s.last_stats.stop_reason, StopReason.CANCELLED)
            # garbage collection of an unreachable iterator, with a reference cycle
            gen = self.endless(s)
            next(gen)
            holder = {"gen": gen}
            holder["self"] = holder
            del gen, holder
            gc.collect()
            self.assertEqual(workers(), [])
            self.assert_lily(s)

    def test_never_started(self):
        with self.model.session(n_ctx=64) as s:
            gen = s.generate("Once upon a time", max_tokens=5)
            s.eval([1])  # the session is free until the first next()
            gen.close()
            self.assertIsNone(gen.stats)
            s.clear()
            self.assert_lily(s)

    def test_cancel_from_another_thread(self):
        with self.model.session(n_ctx=2048) as s:
            gen = self.endless(s)
            next(gen)
            threading.Timer(0.05, s.cancel).start()
            n = sum(1 for _ in gen)  # ends normally
            self.assertGreaterEqual(n, 0)
            self.assertEqual(gen.stats.stop_reason, StopReason.CANCELLED)
            self.assertEqual(workers(), [])
            self.assert_lily(s)

    def test_model_generate_releases_its_session(self):
        gen = self.model.generate("Once upon a time", max_tokens=0, temperature=0,
                                  logit_bias={self.eos: float("-inf")})
        next(gen)
        session = gen.session
        gen.close()
        self.assertTrue(session.closed)
        self.assertEqual(workers(), [])

    def test_one_user_at_a_time(self):
        with self.model.session(n_ctx=2048) as s:
            gen = self.endless(s)
            next(gen)
            for call in (lambda: s.eval([1]), lambda: s.generate("x"), s.clear,
                         lambda: s.truncate(0), lambda: s.embed("x"), lambda: s.tokens):
                with self.assertRaises(libbonsai.InvalidStateError) as cm:
                    call()
                self.assertIn("in use", cm.exception.message)
            s.cancel()
            list(gen)
            s.eval([1])  # free again
            # a sampler serves one generation at a time too
            smp = (libbonsai.Sampler(0).add_custom(lambda c, h: time.sleep(0.002))
                   .add_logit_bias({self.eos: float("-inf")}).add_greedy())
            with self.model.session(n_ctx=64) as t:
                g1 = s.generate("Once", max_tokens=0, sampler=smp)
                next(g1)
                g2 = t.generate("Once", max_tokens=3, sampler=smp)
                with self.assertRaises(libbonsai.InvalidStateError):
                    next(g2)
                g1.close()
                g2.result()
                self.assertEqual(len(g2.tokens), 3)

    def test_errors_surface_in_the_consumer(self):
        """bonsai_last_error() is per thread: the worker must read it, not the consumer."""
        with self.model.session(n_ctx=16) as s:
            prompt = self.model.tokenize("Once upon a time " * 8)
            gen = s.generate(prompt, max_tokens=4)
            with self.assertRaises(libbonsai.ContextFullError) as cm:
                next(gen)
            e = cm.exception
            self.assertEqual(e.status, libbonsai._lib.BONSAI_ERR_CONTEXT_FULL)
            self.assertIn(str(len(prompt)), e.message)
            self.assertIn("16", e.message)
            self.assertEqual(workers(), [])
            # on this thread the last error is not that message (it was set on the worker)
            self.assertNotIn(str(len(prompt)) + " tokens", libbonsai._lib.last_error())
            # the session is usable; eval of too many tokens fails here, with its own message
            with self.assertRaises(libbonsai.ContextFullError) as cm:
                s.eval(prompt)
            self.assertIn("16", cm.exception.message)
            self.assertEqual(s.n_past, 0)
            self.assert_lily(s)

    def test_generation_fills_the_context(self):
        with self.model.session(n_ctx=24) as s:
            gen = self.endless(s)
            gen.result()
            self.assertEqual(gen.stats.stop_reason, StopReason.CONTEXT_FULL)
            self.assertEqual(gen.stats.n_prompt + gen.stats.n_generated, 25)

    def test_concurrent_sessions(self):
        results = {}

        def run(i):
            with self.model.session(n_ctx=64, n_threads=1) as s:
                results[i] = s.complete("Once upon a time", max_tokens=16, temperature=0)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(results), 3)
        self.assertEqual(len(set(results.values())), 1)
        self.assertTrue(results[0].startswith(_util.LILY[:20]))

    def test_callbacks_survive_gc(self):
        """Every callback the binding hands to C is called with gc.collect() running inside."""
        calls = {"progress": 0, "log": 0}

        def progress(p):
            gc.collect()
            calls["progress"] += 1

        model = libbonsai.Model(_util.stories(), progress=progress, use_mmap=False)
        self.assertGreaterEqual(calls["progress"], 2)

        def on_log(level, message):
            gc.collect()
            calls["log"] += 1

        libbonsai.set_log(on_log, libbonsai.LOG_DEBUG)
        try:
            del on_log
            gc.collect()
            with model.session(n_ctx=16) as s:
                with self.assertRaises(libbonsai.ContextFullError):
                    s.eval([1] * 20)  # a failure is logged at DEBUG
            self.assertGreaterEqual(calls["log"], 1)
        finally:
            libbonsai.set_log(None)
        with model.session(n_ctx=128) as s:
            gen = s.generate("Once upon a time", max_tokens=20, temperature=0)
            pieces = []
            for piece in gen:
                gc.collect()
                pieces.append(piece)
            self.assertTrue("".join(pieces).startswith(_util.LILY[:20]))
        model.close()


class GilTest(unittest.TestCase):
    def test_gil_released_during_compute(self):
        """While the library evaluates a long batch on another thread, Python code keeps
        running on this one."""
        with libbonsai.Model(_util.qwen3_tiny(), progress=False) as m:
            tokens = m.tokenize("hello world " * 400, add_bos=False)
            for repeat in (1, 2, 4, 8):  # until the batch takes long enough to tell
                batch = tokens * repeat
                with m.session(n_ctx=len(batch) + 8, n_threads=1) as s:
                    started = threading.Event()

                    def work():
                        started.set()
                        s.eval(batch)

                    t = threading.Thread(target=work)
                    t.start()
                    started.wait()
                    spins = 0
                    t0 = time.monotonic()
                    while t.is_alive():
                        spins += 1
                    elapsed = time.monotonic() - t0
                    t.join()
                    self.assertEqual(s.n_past, len(batch))
                if elapsed > 0.2:
                    break
            self.assertGreater(elapsed, 0.05, "the batch was too short to tell")
            # had the call kept the GIL, this thread could not have run meanwhile
            self.assertGreater(spins, 100)


if __name__ == "__main__":
    _util.main()
