#!/usr/bin/env python3
"""The dynamic symbols a shared library exports must equal the global list of its version map."""
import re
import subprocess
import sys


def map_symbols(path):
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    syms = set()
    for block in re.findall(r"global:(.*?)(?:local:|})", text, flags=re.S):
        syms.update(s.strip() for s in block.split(";") if s.strip())
    return syms


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                         capture_output=True, text=True).stdout
    syms = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "TDBRVWiu":
            name = parts[2].split("@")[0]
            if not name.startswith("LIBBONSAI_"):  # the version node itself
                syms.add(name)
    return syms


def header_symbols(path):
    text = open(path).read()
    return set(re.findall(r"BONSAI_API[^;(]*?\b(bonsai_\w+)\s*\(", text, flags=re.S))


def main():
    lib, mapfile = sys.argv[1], sys.argv[2]
    want, have = map_symbols(mapfile), exported(lib)
    ok = True
    if len(sys.argv) > 3:
        declared = header_symbols(sys.argv[3])
        for s in sorted(declared - want):
            print(f"declared in the header but not in the map: {s}")
            ok = False
        for s in sorted(want - declared):
            print(f"in the map but not declared in the header: {s}")
            ok = False
    for s in sorted(want - have):
        print(f"in the map but not exported: {s}")
        ok = False
    for s in sorted(have - want):
        print(f"exported but not in the map: {s}")
        ok = False
    if not want:
        print("the map lists no symbols")
        ok = False
    print(f"{len(have)} exported, {len(want)} in the map")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
