#!/usr/bin/env python3
"""An fp64 reference forward pass for GGUF models of architecture `llama` and `qwen3`.

Written from docs/FORMAT.md (../shared/docs/FORMAT.md) and the GGUF files alone, independently of
the library's C code, so that the two can check each other. Everything is numpy float64, the whole
sequence at once (causal mask) instead of token by token with a KV cache: the results are the same.

    python3 reference.py MODEL.gguf ID ID ...      prints the greedy next token at each position
"""
import struct
import sys

import numpy as np

# ---------------------------------------------------------------------------------------------
# GGUF reader (FORMAT.md section 1)

# value type -> struct format of the scalar types; 7 bool, 8 string and 9 array are handled apart
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


class GGUF:
    """Metadata (`self.meta`: key -> value) and tensor infos (`self.tensors`: name ->
    (ggml type, ne, absolute offset)) of a GGUF v2/v3 file, whose bytes are `self.data`."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 4
        if self.data[:4] != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = self._scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} not supported")
        n_tensors, n_kv = self._scalar("<Q"), self._scalar("<Q")
        self.meta = {}
        for _ in range(n_kv):
            key = self._string()
            self.meta[key] = self._value(self._scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("<I")
            ne = [self._scalar("<Q") for _ in range(n_dims)]
            infos.append((name, self._scalar("<I"), ne, self._scalar("<Q")))
        align = self.meta.get("general.alignment", 32)
        start = (self.pos + align - 1) // align * align
        self.tensors = {name: (typ, ne, start + off) for name, typ, ne, off in infos}

    def _scalar(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def _string(self):
        n = self._scalar("<Q")
        s = self.data[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return s

    def _value(self, vtype):
        if vtype == 8:
            return self._string()
        if vtype == 9:
            etype, count = self._scalar("<I"), self._scalar("<Q")
            return [self._value(etype) for _ in range(count)]
        if vtype in _SCALARS:
            return self._scalar(_SCALARS[vtype])
        raise ValueError(f"unknown GGUF value type {vtype}")

    def tensor(self, name):
        """The tensor dequantized to float64, shaped [ne[n-1], ..., ne[0]] (rows of ne[0])."""
        typ, ne, off = self.tensors[name]
        n = int(np.prod(ne))
        return dequantize(typ, self.data, off, n).reshape(ne[::-1])


# ---------------------------------------------------------------------------------------------
# Dequantizers (FORMAT.md section 2): n values of type `typ` at byte `off` of `buf` -> float64


def _f16(raw):
    return np.frombuffer(raw, dtype="<f2").astype(np.float64)


def dequantize(typ, buf, off, n):
    if typ == 0:  # F32
        return np.frombuffer(buf, dtype="<f4", count=n, offset=off).astype(np.float64)
    if typ == 1:  # F16
        return np.frombuffer(buf, dtype="<f2", count=n, offset=off).astype(np.float64)
    if typ == 30:  # BF16: the high half of an fp32
        hi = np.frombuffer(buf, dtype="<u2", count=n, offset=off).astype(np.uint32) << 16
        return hi.view(np.float32).astype(np.float64)
    if typ == 8:  # Q8_0: blocks of 32 = f16 d, i8 q[32]; w = d*q
        blocks = np.frombuffer(buf, dtype=np.uint8, count=n // 32 * 34, offset=off).reshape(-1, 34)
        d = _f16(blocks[:, :2].tobytes())
        q = blocks[:, 2:].view(np.int8).astype(np.float64)
        return (d[:, None] * q).reshape(-1)
    if typ == 41:  # Q1_0: blocks of 128 = f16 d, u8 qs[16]; weight j is bit j&7 of qs[j>>3]
        blocks = np.frombuffer(buf, dtype=np.uint8, count=n // 128 * 18, offset=off).reshape(-1, 18)
        d = _f16(blocks[:, :2].tobytes())
        bits = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little")  # [:, j] = bit j&7 of qs[j>>3]
        return np.where(bits == 1, d[:, None], -d[:, None]).reshape(-1)  # w = d*(2b-1)
    raise ValueError(f"tensor type {typ} not supported by the reference")


# ---------------------------------------------------------------------------------------------
# Forward pass (FORMAT.md section 3)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_angles(hp, n_pos):
    """cos and sin, [n_pos, n_rot/2], of the angle of pair i at position p, and the YaRN m."""
    n_rot, base = hp["n_rot"], hp["rope_base"]
    i = np.arange(n_rot // 2)
    theta_e = np.arange(n_pos)[:, None] * base ** (-2.0 * i / n_rot)
    theta, m = theta_e, 1.0
    if hp["yarn_factor"]:
        factor, n_orig = hp["yarn_factor"], hp["yarn_orig_ctx"]

        def corr(beta):
            return n_rot * np.log(n_orig / (beta * 2 * np.pi)) / (2 * np.log(base))

        lo, hi = max(0.0, np.floor(corr(32))), min(n_rot - 1.0, np.ceil(corr(1)))
        r = 1 - np.clip((i - lo) / max(0.001, hi - lo), 0, 1)
        theta = theta_e / factor * (1 - r) + theta_e * r
        m = 1 + 0.1 * np.log(factor)
    return np.cos(theta) * m, np.sin(theta) * m


def rope(v, cos, sin, neox):
    """Rotate [n_pos, n_heads, head_dim] by the angles: pairs (i, i + n_rot/2) in NeoX style
    (qwen3), adjacent pairs (2i, 2i+1) otherwise (llama). Dims past n_rot are left alone."""
    half = cos.shape[1]
    v = v.copy()
    if neox:
        a, b = v[..., :half].copy(), v[..., half:2 * half].copy()
    else:
        a, b = v[..., 0:2 * half:2].copy(), v[..., 1:2 * half:2].copy()
    cos, sin = cos[:, None, :], sin[:, None, :]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if neox:
        v[..., :half], v[..., half:2 * half] = ra, rb
    else:
        v[..., 0:2 * half:2], v[..., 1:2 * half:2] = ra, rb
    return v


def hparams(g):
    arch = g.meta["general.architecture"]
    if arch not in ("llama", "qwen3"):
        raise ValueError(f"architecture {arch} not supported by the reference")

    def key(k, default=None):
        return g.meta.get(f"{arch}.{k}", default)

    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    head_dim = key("attention.key_length", n_embd // n_head)
    yarn = key("rope.scaling.type", "none") == "yarn"
    if key("rope.scaling.type", "none") not in ("none", "yarn"):
        raise ValueError("only YaRN RoPE scaling is supported by the reference")
    return {
        "arch": arch, "n_layer": key("block_count"), "n_embd": n_embd, "n_head": n_head,
        "n_head_kv": key("attention.head_count_kv", n_head), "head_dim": head_dim,
        "eps": key("attention.layer_norm_rms_epsilon"),
        "n_rot": key("rope.dimension_count", head_dim), "rope_base": key("rope.freq_base", 10000.0),
        "yarn_factor": key("rope.scaling.factor") if yarn else None,
        "yarn_orig_ctx": key("rope.scaling.original_context_length") if yarn else None,
    }


def forward(g, ids):
    """Logits [len(ids), n_vocab] (float64) of the token ids, every position."""
    hp = hparams(g)
    eps, hd, n_head, n_kv = hp["eps"], hp["head_dim"], hp["n_head"], hp["n_head_kv"]
    qwen3 = hp["arch"] == "qwen3"
    T = len(ids)
    W = g.tensor
    embd = W("token_embd.weight")
    x = embd[np.asarray(ids)]
    cos, sin = rope_angles(hp, T)
    causal = np.triu(np.full((T, T), -np.inf), k=1)
    for layer in range(hp["n_layer"]):
        p = f"blk.{layer}."
        h = rmsnorm(x, W(p + "attn_norm.weight"), eps)
        q = (h @ W(p + "attn_q.weight").T).reshape(T, n_head, hd)
        k = (h @ W(p + "attn_k.weight").T).reshape(T, n_kv, hd)
        v = (h @ W(p + "attn_v.weight").T).reshape(T, n_kv, hd)
        if qwen3:
            q = rmsnorm(q, W(p + "attn_q_norm.weight"), eps)
            k = rmsnorm(k, W(p + "attn_k_norm.weight"), eps)
        q, k = rope(q, cos, sin, neox=qwen3), rope(k, cos, sin, neox=qwen3)
        group = n_head // n_kv  # head h reads kv head h // group
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        att = scores / scores.sum(axis=-1, keepdims=True)
        out = np.einsum("hts,shd->thd", att, v).reshape(T, n_head * hd)
        x = x + out @ W(p + "attn_output.weight").T
        h = rmsnorm(x, W(p + "ffn_norm.weight"), eps)
        gate, up = h @ W(p + "ffn_gate.weight").T, h @ W(p + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ W(p + "ffn_down.weight").T
    out_w = W("output.weight") if "output.weight" in g.tensors else embd
    return rmsnorm(x, W("output_norm.weight"), eps) @ out_w.T


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    logits = forward(GGUF(sys.argv[1]), [int(a) for a in sys.argv[2:]])
    print(" ".join(str(int(t)) for t in logits.argmax(axis=1)))
