#!/usr/bin/env python3
"""Writes the seed corpora of the GGUF fuzzer (tests/fuzz/corpus/gguf) and the model fuzzer
(tests/fuzz/corpus/model).

Small valid GGUF v2/v3 files covering every value type, nested arrays, each supported tensor type
and a non-default alignment, plus a few invalid ones that stop at different checks. The output is
deterministic: running it again rewrites identical files.
Usage: make_corpus.py [gguf-dir [model-dir]]
"""
import os
import struct
import sys

# Metadata value types (FORMAT.md section 1).
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
          U64: "<Q", I64: "<q", F64: "<d"}

# Tensor types: (elements per block, bytes per block).
T_F32, T_F16, T_Q8_0, T_BF16, T_Q1_0 = 0, 1, 8, 30, 41
TRAITS = {T_F32: (1, 4), T_F16: (1, 2), T_Q8_0: (32, 34), T_BF16: (1, 2), T_Q1_0: (128, 18)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    """Encodes a value without its type tag; arrays are (elem_type, [elements])."""
    if vtype == STRING:
        return gstr(v)
    if vtype == ARRAY:
        elem_type, items = v
        return struct.pack("<IQ", elem_type, len(items)) + b"".join(
            value(elem_type, x) for x in items)
    return struct.pack(SCALAR[vtype], v)


def tensor_bytes(ttype, ne):
    n = 1
    for d in ne:
        n *= d
    block, size = TRAITS.get(ttype, (1, 1))  # unknown types: one byte per element
    return n // block * size


def tensor_data(ttype, n, seed):
    """n bytes of a tensor: small finite values (so a model built from them computes sensible
    numbers), a fixed pattern for other types."""
    vals = [((i * 37 + seed) % 101 - 50) / 200.0 for i in range(n)]
    if ttype == T_F32:
        return struct.pack("<%df" % (n // 4), *vals[:n // 4])
    if ttype in (T_F16, T_BF16):
        if ttype == T_F16:
            return struct.pack("<%de" % (n // 2), *vals[:n // 2])
        return b"".join(struct.pack("<f", v)[2:] for v in vals[:n // 2])
    if ttype == T_Q8_0:
        return b"".join(struct.pack("<e", 0.01) + bytes((i * 37 + j + seed) & 0xFF
                                                        for j in range(32)) for i in range(n // 34))
    if ttype == T_Q1_0:
        return b"".join(struct.pack("<e", 0.02) + bytes((i * 91 + j * 37 + seed) & 0xFF
                                                        for j in range(16)) for i in range(n // 18))
    return bytes((i * 37 + seed) & 0xFF for i in range(n))


def gguf(kvs=(), tensors=(), version=3, alignment=32):
    """kvs: (key, type, value); tensors: (name, type, ne). Data bytes follow a fixed pattern."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += gstr(key) + struct.pack("<I", vtype) + value(vtype, v)
    offset, data = 0, b""
    for name, ttype, ne in tensors:
        offset = -(-offset // alignment) * alignment
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", ttype, offset)
        n = tensor_bytes(ttype, ne)
        data += b"\0" * (offset - len(data)) + tensor_data(ttype, n, len(name))
        offset += n
    if tensors:
        out += b"\0" * (-len(out) % alignment) + data
    return out


def corpus():
    all_scalars = [
        ("t.u8", U8, 200), ("t.i8", I8, -100), ("t.u16", U16, 65000), ("t.i16", I16, -32000),
        ("t.u32", U32, 4000000000), ("t.i32", I32, -2000000000), ("t.f32", F32, 1.5),
        ("t.bool", BOOL, 1), ("t.string", STRING, "h\u00e9llo"),
        ("t.u64", U64, 0xFEDCBA9876543210), ("t.i64", I64, -(1 << 63)), ("t.f64", F64, -0.25),
    ]
    nested = (ARRAY, [(U32, [1, 2]), (U32, []), (ARRAY, [(STRING, ["deep"]), (BOOL, [1, 0])])])
    arrays = [
        ("a.f32", ARRAY, (F32, [1.0, -2.0, 3.5])),
        ("a.bool", ARRAY, (BOOL, [1, 0, 1, 1])),
        ("a.i64", ARRAY, (I64, [])),
        ("a.str", ARRAY, (STRING, ["", "one", "two words", b"nul\0inside"])),
        ("a.nested", ARRAY, nested),
    ]
    llama = [
        ("general.architecture", STRING, "llama"), ("general.name", STRING, "tiny"),
        ("llama.context_length", U32, 128), ("llama.embedding_length", U32, 128),
        ("llama.block_count", U32, 1), ("llama.attention.head_count", U32, 4),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "a", "b"])),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, -1.0, -2.0])),
    ]
    one_of_each = [("w.f32", T_F32, [4, 2]), ("w.f16", T_F16, [6]), ("w.q8_0", T_Q8_0, [32, 2]),
                   ("w.bf16", T_BF16, [2, 2, 2]), ("w.q1_0", T_Q1_0, [128, 2, 1, 1])]

    files = {
        "empty-v3.gguf": gguf(),
        "empty-v2.gguf": gguf(version=2),
        "scalars-v3.gguf": gguf(all_scalars),
        "scalars-v2.gguf": gguf(all_scalars, version=2),
        "arrays.gguf": gguf(arrays),
        "llama-meta.gguf": gguf(llama, [("token_embd.weight", T_Q1_0, [128, 4])]),
        "tensor-f32.gguf": gguf(tensors=[one_of_each[0]]),
        "tensor-f16.gguf": gguf(tensors=[one_of_each[1]]),
        "tensor-q8_0.gguf": gguf(tensors=[one_of_each[2]]),
        "tensor-bf16.gguf": gguf(tensors=[one_of_each[3]]),
        "tensor-q1_0.gguf": gguf(tensors=[one_of_each[4]]),
        "all-types-v2.gguf": gguf(arrays[:2], one_of_each, version=2),
        "align64.gguf": gguf([("general.alignment", U32, 64)] + arrays[3:],
                             one_of_each[:3], alignment=64),
        "empty-tensor.gguf": gguf(tensors=[("zero", T_F32, [0, 3]), ("one", T_F16, [2])]),
    }
    # Invalid files, each stopping at a different check.
    f32 = gguf(tensors=[one_of_each[0]])
    files["bad-magic.gguf"] = b"GGML" + f32[4:]
    files["big-endian.gguf"] = b"GGUF\0\0\0\3" + f32[8:]
    files["truncated.gguf"] = gguf(arrays, one_of_each)[:-7]
    files["unknown-type-q4_0.gguf"] = gguf(tensors=[("blk.0.q4", 2, [32])])
    files["duplicate-key.gguf"] = gguf([("dup", U8, 1), ("dup", U8, 2)])
    deep = (U8, [7])
    for _ in range(9):
        deep = (ARRAY, [deep])
    files["nested-too-deep.gguf"] = gguf([("deep", ARRAY, deep)])
    return files


def byte_unicode():
    """GPT-2's byte-to-unicode map: the token text of each byte in a byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def model_corpus():
    """Small models the runtime can load and run, for the model fuzzer (corpus/model): a llama
    with SentencePiece and F32/F16/Q8_0 weights, and a qwen3 with byte-level BPE, a chat
    template's special tokens and Q1_0 weights."""
    files = {}
    # llama: 8-wide, 2 heads of 4 (1 kv head), ffn 16, 1 layer, SPM vocabulary with bytes
    spm = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + \
        ["\u2581the", "\u2581a", "e", "t", "\u2581"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    E, H, KV, F, V = 8, 2, 1, 16, len(spm)
    kvs = [
        ("general.architecture", STRING, "llama"), ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, E), ("llama.feed_forward_length", U32, F),
        ("llama.block_count", U32, 1), ("llama.attention.head_count", U32, H),
        ("llama.attention.head_count_kv", U32, KV), ("llama.rope.dimension_count", U32, E // H),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, spm)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    hd = E // H
    tensors = [("token_embd.weight", T_F32, [E, V]), ("output_norm.weight", T_F32, [E]),
               ("output.weight", T_F16, [E, V]),
               ("blk.0.attn_norm.weight", T_F32, [E]), ("blk.0.attn_q.weight", T_F32, [E, H * hd]),
               ("blk.0.attn_k.weight", T_F32, [E, KV * hd]),
               ("blk.0.attn_v.weight", T_F32, [E, KV * hd]),
               ("blk.0.attn_output.weight", T_F32, [H * hd, E]),
               ("blk.0.ffn_norm.weight", T_F32, [E]), ("blk.0.ffn_gate.weight", T_F16, [E, F]),
               ("blk.0.ffn_up.weight", T_F16, [E, F]), ("blk.0.ffn_down.weight", T_F32, [F, E])]
    files["llama-spm.gguf"] = gguf(kvs, tensors)
    # qwen3: 128-wide, 1 head of 128, ffn 128, 1 layer, byte-level BPE with a few merges
    bu = byte_unicode()
    toks = [bu[b] for b in range(256)] + ["he", "ll", "hell", "hello", "\u0120w"]
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w"]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    V = len(toks) + len(special)
    E = 128
    qk = [
        ("general.architecture", STRING, "qwen3"), ("qwen3.context_length", U32, 64),
        ("qwen3.embedding_length", U32, E), ("qwen3.feed_forward_length", U32, E),
        ("qwen3.block_count", U32, 1), ("qwen3.attention.head_count", U32, 1),
        ("qwen3.attention.head_count_kv", U32, 1), ("qwen3.attention.key_length", U32, 128),
        ("qwen3.attention.value_length", U32, 128), ("qwen3.rope.freq_base", F32, 1e6),
        ("qwen3.rope.scaling.type", STRING, "yarn"), ("qwen3.rope.scaling.factor", F32, 4.0),
        ("qwen3.rope.scaling.original_context_length", U32, 32),
        ("qwen3.attention.layer_norm_rms_epsilon", F32, 1e-6),
        ("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, "qwen2"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, toks + special)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [1] * len(toks) + [3, 3, 3, 4, 4])),
        ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
        ("tokenizer.ggml.eos_token_id", U32, len(toks) + 2),
        ("tokenizer.ggml.padding_token_id", U32, len(toks)),
        ("tokenizer.ggml.add_bos_token", BOOL, 0),
    ]
    qt = [("token_embd.weight", T_Q1_0, [E, V]), ("output_norm.weight", T_F32, [E])]
    for name, shape in [("attn_norm", [E]), ("attn_q", [E, 128]), ("attn_k", [E, 128]),
                        ("attn_v", [E, 128]), ("attn_output", [128, E]), ("attn_q_norm", [128]),
                        ("attn_k_norm", [128]), ("ffn_norm", [E]), ("ffn_gate", [E, E]),
                        ("ffn_up", [E, E]), ("ffn_down", [E, E])]:
        qt.append(("blk.0.%s.weight" % name, T_F32 if len(shape) == 1 else T_Q1_0, shape))
    files["qwen3-bpe.gguf"] = gguf(qk, qt)
    return files


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "gguf")
    model_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "corpus", "model")
    for d, files, limit in ((out_dir, corpus(), 4096), (model_dir, model_corpus(), 65536)):
        os.makedirs(d, exist_ok=True)
        for name, data in sorted(files.items()):
            assert len(data) < limit, name
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
