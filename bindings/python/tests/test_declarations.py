#!/usr/bin/env python3
"""The ctypes declarations of libbonsai._lib against the C header and the symbol map.

The header (include/bonsai/bonsai.h) is parsed for every BONSAI_API function (name, return
type, parameter types), every callback typedef, struct, enum and #define; each is mapped to the
ctypes type(s) with the same ABI and compared with what _lib declares. Every symbol of
lib/bonsai.map must be bound. When a C compiler is available, the struct layouts (sizeof and
every offsetof) are also compared with what the compiler says.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import _util

sys.path.append(os.path.join(_util.SOURCE_ROOT, "tests"))
from check_symbols import map_symbols  # noqa: E402  (the symbol-map reader of the C tests)

from libbonsai import _lib

INTS = {
    "uint8_t": ctypes.c_uint8, "int8_t": ctypes.c_int8, "uint16_t": ctypes.c_uint16,
    "int16_t": ctypes.c_int16, "uint32_t": ctypes.c_uint32, "int32_t": ctypes.c_int32,
    "uint64_t": ctypes.c_uint64, "int64_t": ctypes.c_int64, "float": ctypes.c_float,
    "double": ctypes.c_double, "bool": ctypes.c_bool, "size_t": ctypes.c_size_t,
    "char": ctypes.c_char, "int": ctypes.c_int,
}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


class Header:
    """What the header declares."""

    def __init__(self, path):
        raw = open(path, encoding="utf-8").read()
        self.defines = {m.group(1): int(m.group(2)) for m in re.finditer(
            r"^#define\s+(BONSAI_\w+)\s+(-?\d+)u?\s", strip_comments(raw), flags=re.M)}
        text = strip_comments(raw)
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        text = re.sub(r"\s+", " ", text)
        self.enums = {}  # name -> {constant: value}
        for m in re.finditer(r"typedef enum (\w+) \{(.*?)\} (\w+);", text):
            assert m.group(1) == m.group(3), m.group(0)
            values, nxt = {}, 0
            for item in m.group(2).split(","):
                item = item.strip()
                if not item:
                    continue
                if "=" in item:
                    name, value = (x.strip() for x in item.split("="))
                    nxt = int(value)
                else:
                    name = item
                values[name] = nxt
                nxt += 1
            self.enums[m.group(1)] = values
        self.opaque = set(re.findall(r"typedef struct (\w+) (\w+);", text))
        self.opaque = {a for a, b in self.opaque if a == b}
        self.structs = {}  # name -> [(field, type text)]
        for m in re.finditer(r"typedef struct (\w+) \{(.*?)\} (\w+);", text):
            assert m.group(1) == m.group(3), m.group(0)
            fields = []
            for decl in m.group(2).split(";"):
                decl = decl.strip()
                if decl:
                    fields.append(split_decl(decl))
            self.structs[m.group(1)] = fields
        self.callbacks = {}  # name -> (return type, [param types])
        for m in re.finditer(r"typedef ([^;{}()]*?)\(\s*\*\s*(\w+)\s*\)\s*\(([^;]*?)\)\s*;",
                             text):
            self.callbacks[m.group(2)] = (m.group(1).strip(), params(m.group(3)))
        self.functions = {}  # name -> (return type, [param types])
        for m in re.finditer(r"BONSAI_API ([^;(]*?)\b(bonsai_\w+)\s*\(([^;]*?)\)\s*;", text):
            self.functions[m.group(2)] = (m.group(1).strip(), params(m.group(3)))


def split_decl(decl):
    """'const char *const *stop' -> ('stop', 'const char *const *'); arrays keep '[N]'."""
    m = re.match(r"^(.*?)(\w+)\s*(\[\d+\])?$", decl.strip())
    assert m, decl
    return m.group(2), (m.group(1) + (m.group(3) or "")).strip()


def params(text):
    text = text.strip()
    if text in ("", "void"):
        return []
    return [split_decl(p)[1] for p in text.split(",")]


def parse_type(t):
    """'const char *const *' -> ('char', 2, None); 'uint64_t [4]' -> ('uint64_t', 0, 4)."""
    array = None
    m = re.search(r"\[(\d+)\]$", t)
    if m:
        array = int(m.group(1))
        t = t[:m.start()]
    depth = t.count("*")
    words = [w for w in re.findall(r"\w+", t) if w != "const"]
    assert len(words) == 1, t
    return words[0], depth, array


class TypeMap:
    def __init__(self, header):
        self.h = header

    def base(self, name):
        if name == "void":
            return None
        if name in INTS:
            return INTS[name]
        if name in self.h.enums:
            return ctypes.c_int  # C enums with these values are int
        if name in self.h.callbacks:
            return _lib.CALLBACKS[name]
        if name in self.h.structs or name in self.h.opaque:
            return getattr(_lib, name)
        raise AssertionError("type %r is not in the header" % name)

    def allowed(self, t):
        """The ctypes types with the ABI of C type text `t` (a set)."""
        name, depth, array = parse_type(t)
        if array is not None:
            return {("array", self.base(name), array)}
        return self._allowed(name, depth)

    def _allowed(self, name, depth):
        if depth == 0:
            return {self.base(name)}
        if depth == 1:
            if name == "char":  # a C string, or a buffer / string with a length
                return {ctypes.c_char_p, ctypes.POINTER(ctypes.c_char)}
            if name == "void":
                return {ctypes.c_void_p}
            return {ctypes.POINTER(self.base(name))}
        return {ctypes.POINTER(x) for x in self._allowed(name, depth - 1)}


def describe(ct):
    if isinstance(ct, type) and issubclass(ct, ctypes.Array):
        return ("array", ct._type_, ct._length_)
    return ct


class DeclarationsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.h = Header(_util.HEADER)
        cls.types = TypeMap(cls.h)
        cls.map = map_symbols(_util.MAP_FILE)

    def test_parsed_something(self):
        # guards the parser itself: the header has dozens of each
        self.assertGreater(len(self.h.functions), 80)
        self.assertGreaterEqual(len(self.h.structs), 10)
        self.assertEqual(set(self.h.callbacks), {"bonsai_progress_fn", "bonsai_log_fn",
                                                 "bonsai_token_fn", "bonsai_sampler_fn"})
        self.assertIn("bonsai_status", self.h.enums)

    def test_every_map_symbol_is_bound(self):
        self.assertTrue(self.map)
        self.assertEqual(sorted(self.map - set(_lib.FUNCTIONS)), [],
                         "symbols of lib/bonsai.map without a declaration in _lib.FUNCTIONS")
        self.assertEqual(sorted(set(_lib.FUNCTIONS) - self.map), [],
                         "_lib.FUNCTIONS declares functions the map does not export")
        self.assertEqual(_lib.MISSING, [], "functions the built library does not export")
        for name, (restype, argtypes) in _lib.FUNCTIONS.items():
            fn = getattr(_lib.lib, name)
            self.assertIs(fn.restype, restype, name)
            self.assertEqual(list(fn.argtypes), list(argtypes), name)

    def test_every_header_function_is_declared(self):
        self.assertEqual(sorted(set(self.h.functions) - set(_lib.FUNCTIONS)), [])
        self.assertEqual(sorted(set(_lib.FUNCTIONS) - set(self.h.functions)), [])

    def test_function_signatures(self):
        for name, (ret, args) in sorted(self.h.functions.items()):
            restype, argtypes = _lib.FUNCTIONS[name]
            with self.subTest(function=name):
                self.assertIn(restype, self.types.allowed(ret), "return type %r" % ret)
                self.assertEqual(len(argtypes), len(args), "parameter count")
                for i, (c, py) in enumerate(zip(args, argtypes)):
                    self.assertIn(py, self.types.allowed(c), "parameter %d: %r" % (i, c))

    def test_callback_types(self):
        for name, (ret, args) in self.h.callbacks.items():
            cb = _lib.CALLBACKS[name]
            with self.subTest(callback=name):
                self.assertIs(getattr(_lib, name), cb)
                self.assertIn(cb._restype_, self.types.allowed(ret))
                self.assertEqual(len(cb._argtypes_), len(args))
                for i, (c, py) in enumerate(zip(args, cb._argtypes_)):
                    self.assertIn(py, self.types.allowed(c), "parameter %d: %r" % (i, c))

    def test_struct_fields(self):
        self.assertEqual(sorted(self.h.structs), sorted(_lib.STRUCTS))
        for name, fields in self.h.structs.items():
            cls = _lib.STRUCTS[name]
            with self.subTest(struct=name):
                self.assertIs(getattr(_lib, name), cls)
                self.assertEqual([f for f, _ in cls._fields_], [f for f, _ in fields])
                for (fname, ctext), (_, py) in zip(fields, cls._fields_):
                    self.assertIn(describe(py), self.types.allowed(ctext), fname)
        for name in self.h.opaque:
            self.assertTrue(issubclass(getattr(_lib, name), ctypes.Structure), name)

    def test_constants(self):
        seen = 0
        for enum, values in self.h.enums.items():
            for const, value in values.items():
                self.assertEqual(getattr(_lib, const), value, const)
                seen += 1
        for const, value in self.h.defines.items():
            if const.startswith(("BONSAI_VERSION", "BONSAI_ABI")):
                continue
            self.assertEqual(getattr(_lib, const), value, const)
            seen += 1
        self.assertGreater(seen, 50)

    def test_abi_version(self):
        self.assertEqual(_lib.lib.bonsai_abi_version(), _lib.ABI_VERSION)
        version_h = os.path.join(os.environ.get("BONSAI_BUILD_ROOT", ""), "bonsai_version.h")
        if os.path.exists(version_h):
            m = re.search(r"#define BONSAI_ABI_VERSION (\d+)", open(version_h).read())
            self.assertEqual(int(m.group(1)), _lib.ABI_VERSION)

    def test_struct_layout_against_the_compiler(self):
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        build_root = os.environ.get("BONSAI_BUILD_ROOT", "")
        if not cc or not os.path.exists(os.path.join(build_root, "bonsai_version.h")):
            self.skipTest("needs a C compiler and BONSAI_BUILD_ROOT (the meson build)")
        lines = ['#include "bonsai/bonsai.h"', "#include <stddef.h>", "#include <stdio.h>",
                 "int main(void) {"]
        for name, fields in self.h.structs.items():
            lines.append('printf("%s %%zu %%zu\\n", sizeof(%s), _Alignof(%s));' %
                         (name, name, name))
            for fname, _ in fields:
                lines.append('printf("%s.%s %%zu %%zu\\n", offsetof(%s, %s), '
                             'sizeof(((%s *)0)->%s));' % (name, fname, name, fname, name, fname))
        for enum in self.h.enums:
            lines.append('printf("%s %%zu %%zu\\n", sizeof(%s), _Alignof(%s));' %
                         (enum, enum, enum))
        lines += ["return 0;", "}"]
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = os.path.join(tmp, "layout.c"), os.path.join(tmp, "layout")
            with open(src, "w") as f:
                f.write("\n".join(lines) + "\n")
            subprocess.run([cc, "-std=c11", "-I", os.path.join(_util.SOURCE_ROOT, "include"),
                            "-I", build_root, src, "-o", exe], check=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        got = {}
        for line in out.splitlines():
            key, a, b = line.split()
            got[key] = (int(a), int(b))
        checked = 0
        for name, fields in self.h.structs.items():
            cls = _lib.STRUCTS[name]
            self.assertEqual((ctypes.sizeof(cls), ctypes.alignment(cls)), got[name], name)
            for fname, _ in fields:
                descr = getattr(cls, fname)
                self.assertEqual((descr.offset, descr.size), got["%s.%s" % (name, fname)],
                                 "%s.%s" % (name, fname))
                checked += 1
        for enum in self.h.enums:
            self.assertEqual(got[enum], (ctypes.sizeof(ctypes.c_int),
                                         ctypes.alignment(ctypes.c_int)), enum)
        self.assertGreater(checked, 50)


if __name__ == "__main__":
    _util.main()
