#!/usr/bin/env python3
"""Model: loading (progress, errors), metadata and tensors (checked against an independent
pure-Python GGUF reader), hyper-parameters, special tokens and the tokenizer."""
import math
import os
import struct
import tempfile
import unicodedata
import unittest

import _util
import gguf_util

import libbonsai
from libbonsai import _lib


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


class ModelFileTest(unittest.TestCase):
    """Everything the binding says about a file equals what an independent reader finds."""

    def check_against_reader(self, path):
        ref = gguf_util.read_gguf(path)
        kv = {k: v for k, _, v in ref["kv"]}
        with libbonsai.Model(path, progress=False) as m:
            self.assertEqual(m.gguf_version, ref["version"])
            self.assertEqual(m.file_size, os.path.getsize(path))
            self.assertEqual(m.architecture, kv.get("general.architecture", ""))
            self.assertEqual(m.name, kv.get("general.name", ""))
            self.assertEqual(m.n_vocab, len(kv.get("tokenizer.ggml.tokens", [])))
            self.assertEqual(m.n_params, sum(t["n_elements"] for t in ref["tensors"]))
            # metadata: same keys in the same order, same values and types
            self.assertEqual(list(m.metadata), [k for k, _, _ in ref["kv"]])
            self.assertEqual(len(m.metadata), len(ref["kv"]))
            for key, t, value in ref["kv"]:
                with self.subTest(key=key):
                    self.assertIn(key, m.metadata)
                    got = m.metadata[key]
                    self.assertEqual(got, value)
                    self.assertEqual(type(got), type(value))
                    name = m.metadata.type_of(key)
                    if t == gguf_util.ARRAY:
                        self.assertTrue(name.startswith("array["), name)
                    else:
                        self.assertEqual(name, libbonsai.value_type_name(t))
            self.assertNotIn("no.such.key", m.metadata)
            with self.assertRaises(KeyError):
                m.metadata["no.such.key"]
            self.assertIsNone(m.metadata.get("no.such.key"))
            # tensors
            tensors = m.tensors
            self.assertEqual(len(tensors), len(ref["tensors"]))
            for got, want in zip(tensors, ref["tensors"]):
                with self.subTest(tensor=want["name"]):
                    self.assertEqual(got.name, want["name"])
                    self.assertEqual(got.dims, want["dims"])
                    self.assertEqual(got.type, want["type"])
                    self.assertEqual(got.type_name, gguf_util.TYPE_NAMES[want["type"]])
                    self.assertEqual(got.n_elements, want["n_elements"])
                    self.assertEqual(got.n_bytes, want["n_bytes"])
                    self.assertEqual(got.file_offset, want["offset"])
                    self.assertEqual(m.tensor(want["name"]), got)
            with self.assertRaises(libbonsai.NotFoundError) as cm:
                m.tensor("no.such.tensor")
            self.assertIsInstance(cm.exception, LookupError)
            self.assertEqual(cm.exception.status, _lib.BONSAI_ERR_NOT_FOUND)
            return m, kv

    def test_stories260K(self):
        path = _util.stories()
        self.check_against_reader(path)
        kv = {k: v for k, _, v in gguf_util.read_gguf(path)["kv"]}
        with libbonsai.Model(path, progress=False) as m:
            hp = m.hparams
            self.assertEqual(hp.n_layer, kv["llama.block_count"])
            self.assertEqual(hp.n_embd, kv["llama.embedding_length"])
            self.assertEqual(hp.n_ff, kv["llama.feed_forward_length"])
            self.assertEqual(hp.n_head, kv["llama.attention.head_count"])
            self.assertEqual(hp.n_head_kv, kv["llama.attention.head_count_kv"])
            self.assertEqual(hp.n_ctx_train, kv["llama.context_length"])
            self.assertEqual(hp.rms_eps, kv["llama.attention.layer_norm_rms_epsilon"])
            self.assertEqual(hp.n_vocab, m.n_vocab)
            self.assertEqual(hp.head_dim_k, hp.n_embd // hp.n_head)  # absent key: derived
            self.assertEqual(hp.as_dict()["n_layer"], hp.n_layer)
            self.assertEqual(m.n_embd, hp.n_embd)
            self.assertEqual(m.bos, kv["tokenizer.ggml.bos_token_id"])
            self.assertEqual(m.eos, kv["tokenizer.ggml.eos_token_id"])
            self.assertTrue(m.is_eog(m.eos))
            self.assertFalse(m.is_eog(m.bos))
            self.assertTrue(m.is_control(m.bos))
            self.assertIn("llama", repr(m))

    def test_qwen3_tiny(self):
        path = _util.qwen3_tiny()
        self.check_against_reader(path)
        kv = {k: v for k, _, v in gguf_util.read_gguf(path)["kv"]}
        with libbonsai.Model(path, progress=False) as m:
            self.assertIsNone(m.bos)  # the Qwen3 tokenizer has none
            self.assertEqual(m.eos, kv["tokenizer.ggml.eos_token_id"])
            self.assertEqual(m.pad, kv["tokenizer.ggml.padding_token_id"])
            self.assertEqual(m.eot, m.tokenize("<|im_end|>", add_bos=False, special=True)[0])
            self.assertTrue(m.is_eog(m.eot))
            self.assertEqual(m.hparams.rope_freq_base, kv["qwen3.rope.freq_base"])
            self.assertEqual(m.hparams.rope_scaling_yarn, 1)

    def test_every_value_type(self):
        # the real file with one value of each scalar type
        self.check_against_reader(_util.data_file("hyllama-dummy.gguf"))

    def test_written_file_with_nested_arrays(self):
        G = gguf_util
        kv = [
            ("general.architecture", G.STRING, "none"),
            ("t.u8", G.U8, 200), ("t.i8", G.I8, -100), ("t.u16", G.U16, 65000),
            ("t.i16", G.I16, -32000), ("t.u32", G.U32, 4000000000), ("t.i32", G.I32, -2000000000),
            ("t.f32", G.F32, 0.1), ("t.bool", G.BOOL, True), ("t.false", G.BOOL, False),
            ("t.u64", G.U64, 2 ** 63 + 5), ("t.i64", G.I64, -2 ** 62), ("t.f64", G.F64, math.pi),
            ("t.str", G.STRING, "h\u00e9llo \u4e16\u754c"), ("t.empty", G.STRING, ""),
            ("t.arr.u8", G.ARRAY, (G.U8, [1, 2, 255])),
            ("t.arr.bool", G.ARRAY, (G.BOOL, [True, False, True])),
            ("t.arr.f64", G.ARRAY, (G.F64, [1.5, -2.25])),
            ("t.arr.i64", G.ARRAY, (G.I64, [-1, 2 ** 40])),
            ("t.arr.str", G.ARRAY, (G.STRING, ["a", "", "\u00fc"])),
            ("t.arr.empty", G.ARRAY, (G.U32, [])),
            ("t.arr.arr", G.ARRAY, (G.ARRAY, [(G.I32, [1, -2]), (G.STRING, ["x"]),
                                              (G.ARRAY, [(G.U8, [7])])])),
        ]
        expected = {
            "t.u8": 200, "t.i8": -100, "t.u16": 65000, "t.i16": -32000, "t.u32": 4000000000,
            "t.i32": -2000000000, "t.f32": f32(0.1), "t.bool": True, "t.false": False,
            "t.u64": 2 ** 63 + 5, "t.i64": -2 ** 62, "t.f64": math.pi,
            "t.str": "h\u00e9llo \u4e16\u754c", "t.empty": "", "t.arr.u8": [1, 2, 255],
            "t.arr.bool": [True, False, True], "t.arr.f64": [1.5, -2.25],
            "t.arr.i64": [-1, 2 ** 40], "t.arr.str": ["a", "", "\u00fc"], "t.arr.empty": [],
            "t.arr.arr": [[1, -2], ["x"], [[7]]],
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "values.gguf")
            G.write_gguf(path, kv, [("w", (4, 2), [float(i) for i in range(8)])])
            self.check_against_reader(path)
            with libbonsai.Model(path, progress=False, use_mmap=False) as m:
                for key, value in expected.items():
                    with self.subTest(key=key):
                        self.assertEqual(m.metadata[key], value)
                        self.assertEqual(type(m.metadata[key]), type(value))
                self.assertEqual(m.metadata.type_of("t.arr.str"), "array[string]")
                self.assertEqual(m.metadata.type_of("t.u64"), "u64")
                # a returned list is a copy
                m.metadata["t.arr.u8"].append(9)
                self.assertEqual(m.metadata["t.arr.u8"], [1, 2, 255])
                self.assertEqual(m.tensors[0].dims, (4, 2))
                with self.assertRaises(libbonsai.UnsupportedError):
                    m.tokenize("no tokenizer here")


class LoadTest(unittest.TestCase):
    def test_missing_file(self):
        path = os.path.join(tempfile.gettempdir(), "no-such-dir-libbonsai", "model.gguf")
        with self.assertRaises(libbonsai.FileError) as cm:
            libbonsai.Model(path, progress=False)
        e = cm.exception
        self.assertEqual(e.status, _lib.BONSAI_ERR_IO)
        self.assertIsInstance(e, libbonsai.BonsaiError)
        self.assertIsInstance(e, OSError)
        self.assertIn(path, e.message)  # the library's message names the file
        self.assertIn(path, str(e))
        self.assertEqual(e.status_name, "input/output error")

    def test_invalid_files(self):
        stories = _util.stories()
        with tempfile.TemporaryDirectory() as tmp:
            junk = os.path.join(tmp, "junk.gguf")
            with open(junk, "wb") as f:
                f.write(b"this is not a model" * 10)
            with self.assertRaises(libbonsai.BadMagicError) as cm:
                libbonsai.Model(junk, progress=False)
            self.assertIn("junk.gguf", str(cm.exception))
            self.assertIsInstance(cm.exception, libbonsai.InvalidFileError)
            cut = os.path.join(tmp, "cut.gguf")
            with open(stories, "rb") as f, open(cut, "wb") as g:
                g.write(f.read(os.path.getsize(stories) // 2))
            with self.assertRaises(libbonsai.InvalidFileError) as cm:
                libbonsai.Model(cut, progress=False)
            self.assertIn(cm.exception.status, (_lib.BONSAI_ERR_TRUNCATED,
                                                _lib.BONSAI_ERR_CORRUPT))
            self.assertIn("cut.gguf", cm.exception.message)

    def test_progress(self):
        path = _util.stories()
        for use_mmap in (True, False):
            seen = []
            with libbonsai.Model(path, use_mmap=use_mmap, progress=seen.append) as m:
                self.assertEqual(m.architecture, "llama")
            self.assertEqual(seen[0], 0.0)
            self.assertEqual(seen[-1], 1.0)
            self.assertEqual(seen, sorted(seen))

    def test_progress_abort(self):
        path = _util.stories()
        with self.assertRaises(libbonsai.AbortedError):
            libbonsai.Model(path, progress=lambda p: p < 1)

        class Stop(Exception):
            pass

        def boom(p):
            raise Stop("from the callback")

        with self.assertRaises(Stop) as cm:
            libbonsai.Model(path, progress=boom)
        self.assertIsInstance(cm.exception.__cause__, libbonsai.AbortedError)

    def test_max_memory(self):
        path = _util.stories()
        with self.assertRaises(libbonsai.OutOfMemoryError) as cm:
            libbonsai.Model(path, use_mmap=False, max_memory=1000, progress=False)
        self.assertIn("1000", cm.exception.message)
        with libbonsai.Model(path, use_mmap=False, max_memory=1 << 30, progress=False) as m:
            with self.assertRaises(libbonsai.OutOfMemoryError):
                m.session(n_ctx=2048, max_memory=4096)
            with m.session(n_ctx=64, max_memory=1 << 26) as s:
                s.eval(m.tokenize("Once upon a time"))

    def test_progress_bar(self):
        import io
        path = _util.stories()
        bar = libbonsai.model._ProgressBar("loading", io.StringIO())
        with libbonsai.Model(path, progress=bar):
            pass
        self.assertIn("100%", bar.stream.getvalue())

    def test_close(self):
        m = libbonsai.Model(_util.stories(), progress=False)
        s = m.session(n_ctx=64)
        m.close()
        m.close()
        self.assertTrue(m.closed)
        with self.assertRaises(libbonsai.InvalidStateError):
            m.n_vocab
        # the session keeps the C model alive
        self.assertEqual(s.tokenize("Once upon a time")[0], 1)
        s.eval(s.tokenize("Once"))
        self.assertEqual(s.n_past, 2)
        s.close()

    def test_versions_and_log(self):
        self.assertRegex(libbonsai.library_version(), r"^\d+\.\d+\.\d+$")
        major, minor, patch = map(int, libbonsai.library_version().split("."))
        self.assertEqual(libbonsai.library_version_number(), major * 10000 + minor * 100 + patch)
        self.assertEqual(libbonsai.abi_version(), libbonsai.ABI_VERSION)
        messages = []
        libbonsai.set_log(lambda level, msg: messages.append((level, msg)), libbonsai.LOG_DEBUG)
        try:
            with self.assertRaises(libbonsai.FileError) as cm:
                libbonsai.Model("/nonexistent/dir/x.gguf", progress=False)
        finally:
            libbonsai.set_log(None)
        self.assertTrue(any(cm.exception.message in msg for _, msg in messages), messages)
        self.assertTrue(all(0 <= level <= 3 for level, _ in messages))
        n = len(messages)
        with self.assertRaises(libbonsai.FileError):
            libbonsai.Model("/nonexistent/dir/x.gguf", progress=False)
        self.assertEqual(len(messages), n)  # silent again


class TokenizerTest(unittest.TestCase):
    def test_stories_round_trip(self):
        with libbonsai.Model(_util.stories(), progress=False) as m:
            for text in ["Once upon a time", "Hello, world!", "  two  spaces", "caf\u00e9 \u2603",
                         "line\nbreak", ""]:
                with self.subTest(text=text):
                    tokens = m.tokenize(text)
                    self.assertEqual(tokens[:1], [m.bos])
                    self.assertTrue(all(0 <= t < m.n_vocab for t in tokens))
                    self.assertEqual(m.detokenize(tokens), text)
                    self.assertEqual(m.tokenize(text, add_bos=False), tokens[1:])
                    # pieces: SentencePiece puts a space in front of the text
                    pieces = b"".join(m.token_to_piece(t) for t in tokens[1:])
                    self.assertEqual(pieces, (b" " + text.encode()) if text else b"")
            self.assertEqual(m.token_to_piece(m.bos), b"")
            self.assertEqual(m.token_to_piece(m.bos, special=True), b"<s>")
            self.assertEqual(m.detokenize([m.bos], special=True), "<s>")
            tokens = m.tokenize("Once upon a time", add_bos=False)
            self.assertEqual(m.detokenize(tokens, continuation=True), " Once upon a time")
            with self.assertRaises(libbonsai.OutOfRangeError):
                m.token_to_piece(m.n_vocab)

    def test_qwen3_conformance(self):
        """The 46 upstream test cases of the qwen2 pre-tokenizer, through the binding."""
        path = _util.qwen3_tiny()
        inp = open(_util.data_file("ggml-vocab-qwen2.gguf.inp"), encoding="utf-8").read()
        out = open(_util.data_file("ggml-vocab-qwen2.gguf.out"), encoding="utf-8").read()
        # cut as llama.cpp's read_tests() does: every case ends with the separator
        cases = inp.split("\n__ggml_vocab_test__\n")
        if cases[-1] == "":
            cases.pop()
        expected = out.split("\n")
        if expected[-1] == "" and len(expected) == len(cases) + 1:
            expected.pop()
        self.assertEqual(len(cases), 46)
        self.assertEqual(len(expected), 46)
        with libbonsai.Model(path, progress=False) as m:
            passed = 0
            for text, ids in zip(cases, expected):
                with self.subTest(text=text):
                    want = [int(x) for x in ids.split()]
                    tokens = m.tokenize(text, add_bos=False)
                    self.assertEqual(tokens, want)
                    self.assertEqual(m.detokenize(tokens), unicodedata.normalize("NFC", text))
                    passed += 1
            self.assertEqual(passed, 46)

    def test_qwen3_special_and_streaming(self):
        with libbonsai.Model(_util.qwen3_tiny(), progress=False) as m:
            text = "<|im_start|>user\nh\u00e9llo \u4e16\u754c \U0001F642<|im_end|>"
            plain = m.tokenize(text, add_bos=False)
            special = m.tokenize(text, add_bos=False, special=True)
            self.assertLess(len(special), len(plain))
            self.assertTrue(m.is_control(special[0]))
            self.assertEqual(m.detokenize(special, special=True), text)
            self.assertEqual(m.detokenize(special), "user\nh\u00e9llo \u4e16\u754c \U0001F642")
            self.assertEqual(m.detokenize(plain), text)  # written out, not special
            with m.detokenizer() as d:
                pieces = [d.push(t) for t in plain]
                pieces.append(d.flush())
            self.assertEqual("".join(pieces), text)
            # the emoji is several byte tokens: no piece holds half of it
            self.assertTrue(all("\ufffd" not in p for p in pieces))
            self.assertEqual(m.detokenize_bytes(plain), text.encode())


if __name__ == "__main__":
    _util.main()
