#!/usr/bin/env python3
"""`meson install` into a staging directory, then build examples/model_info.c out of tree with
nothing but `pkg-config --cflags --libs bonsai`, and run it on a real model."""
import os
import subprocess
import sys
import tempfile

build_root, source_root = sys.argv[1], sys.argv[2]
data = os.environ.get("BONSAI_TEST_DATA", os.path.join(source_root, "..", "shared", "data"))
model = os.path.join(data, "stories260K.gguf")
if not os.path.exists(model):
    if os.environ.get("BONSAI_REQUIRE_TEST_DATA") == "1":
        sys.exit(f"required test data missing: {model}")
    print(f"SKIP: test data missing: {model}")
    sys.exit(77)

with tempfile.TemporaryDirectory() as stage:
    subprocess.run(["meson", "install", "-C", build_root, "--destdir", stage, "--quiet",
                    "--no-rebuild"], check=True, stdout=subprocess.DEVNULL)
    pcs = [os.path.join(d, f) for d, _, fs in os.walk(stage) for f in fs if f == "bonsai.pc"]
    assert len(pcs) == 1, pcs
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]),
               PKG_CONFIG_SYSROOT_DIR=stage)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "bonsai"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    exe = os.path.join(stage, "model_info")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror",
                    os.path.join(source_root, "examples", "model_info.c"), *flags, "-o", exe],
                   check=True)
    libdir = [f[2:] for f in flags if f.startswith("-L")][0]
    out = subprocess.run([exe, model], env=dict(os.environ, LD_LIBRARY_PATH=libdir),
                         check=True, capture_output=True, text=True).stdout
    print(out, end="")
    assert "architecture 'llama'" in out and "48 tensors" in out, out
    headers = [f for _, _, fs in os.walk(stage) for f in fs if f.endswith(".h")]
    assert sorted(headers) == ["bonsai.h", "bonsai_version.h"], headers
    print("install: ok")
