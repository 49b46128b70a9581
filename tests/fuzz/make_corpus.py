#!/usr/bin/env python3
"""Writes the seed corpus of the GGUF fuzzer (tests/fuzz/corpus/gguf).

Small valid GGUF v2/v3 files covering every value type, nested arrays, each supported tensor type
and a non-default alignment, plus a few invalid ones that stop at different checks. The output is
deterministic: running it again rewrites identical files. Usage: make_corpus.py [output-dir]
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
        data += b"\0" * (offset - len(data)) + bytes((i * 37 + len(name)) & 0xFF for i in range(n))
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


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf")
    os.makedirs(out_dir, exist_ok=True)
    for name, data in sorted(corpus().items()):
        assert len(data) < 4096, name
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
