"""A small independent GGUF reader and writer (pure Python) for cross-checking the binding."""
import struct

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64: "<d"}

# bytes per block and elements per block of the tensor types libbonsai loads
TYPE_BLOCKS = {0: (4, 1), 1: (2, 1), 8: (34, 32), 30: (2, 1), 41: (18, 128)}
TYPE_NAMES = {0: "F32", 1: "F16", 8: "Q8_0", 30: "BF16", 41: "Q1_0"}


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8", "replace")

    def value(self, t):
        if t in _FMT:
            return self.take(_FMT[t])
        if t == STRING:
            return self.string()
        if t == ARRAY:
            et = self.take("<I")
            n = self.take("<Q")
            return [self.value(et) for _ in range(n)]
        raise ValueError("value type %d" % t)


def read_gguf(path):
    """{'version', 'kv': [(key, type, value)], 'tensors': [dict(name, dims, type, offset,
    n_elements, n_bytes)]} with offsets absolute in the file."""
    data = open(path, "rb").read()
    r = _Reader(data)
    assert data[:4] == b"GGUF", path
    r.pos = 4
    version = r.take("<I")
    n_tensors = r.take("<Q")
    n_kv = r.take("<Q")
    kv = []
    for _ in range(n_kv):
        key = r.string()
        t = r.take("<I")
        kv.append((key, t, r.value(t)))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("<I")
        dims = tuple(r.take("<Q") for _ in range(n_dims))
        t = r.take("<I")
        off = r.take("<Q")
        n = 1
        for d in dims:
            n *= d
        bpb, epb = TYPE_BLOCKS[t]
        tensors.append(dict(name=name, dims=dims, type=t, offset=off, n_elements=n,
                            n_bytes=n // epb * bpb))
    alignment = dict((k, v) for k, _, v in kv).get("general.alignment", 32)
    start = (r.pos + alignment - 1) // alignment * alignment
    for t in tensors:
        t["offset"] += start
    return dict(version=version, kv=kv, tensors=tensors)


def _w_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _w_value(t, v, elem=None):
    if t in _FMT:
        return struct.pack(_FMT[t], v)
    if t == STRING:
        return _w_string(v)
    if t == ARRAY:
        et, items = elem
        out = struct.pack("<IQ", et, len(items))
        for item in items:
            if et == ARRAY:
                out += _w_value(ARRAY, None, item)
            else:
                out += _w_value(et, item)
        return out
    raise ValueError(t)


def write_gguf(path, kv, tensors=()):
    """Write a GGUF v3 file. kv: [(key, type, value)] where an array value is
    (elem_type, items) and items of an array of arrays are (elem_type, items) again.
    tensors: [(name, dims, float values)] stored as F32."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, t, v in kv:
        out += _w_string(key) + struct.pack("<I", t)
        out += _w_value(t, v, v if t == ARRAY else None)
    offset = 0
    blobs = []
    for name, dims, values in tensors:
        out += _w_string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)
        blob = struct.pack("<%df" % len(values), *values)
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        offset += len(blob)
    out += b"\0" * (-len(out) % 32)
    out += b"".join(blobs)
    with open(path, "wb") as f:
        f.write(out)
