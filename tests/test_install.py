#!/usr/bin/env python3
"""`meson install` into a staging directory, then build the examples out of tree with nothing but
`pkg-config --cflags --libs bonsai` (as examples/README.md tells users to), and run model_info and
simple on a real model."""
import os
import shutil
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
    cc = os.environ.get("CC", "cc")
    examples = os.path.join(source_root, "examples")

    def build(source, compiler, *std):
        exe = os.path.join(stage, os.path.splitext(source)[0])
        subprocess.run([compiler, *std, "-Wall", "-Wextra", "-Werror",
                        os.path.join(examples, source), *flags, "-o", exe], check=True)
        return exe

    libdir = [f[2:] for f in flags if f.startswith("-L")][0]
    run_env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    out = subprocess.run([build("model_info.c", cc, "-std=c11"), model], env=run_env,
                         check=True, capture_output=True, text=True).stdout
    print(out, end="")
    assert "architecture 'llama'" in out and "48 tensors" in out, out

    # the first example users read: greedy, so the real model's known story
    r = subprocess.run([build("simple.c", cc, "-std=c11"), "-n", "16", "--temp", "0", model,
                        "Once upon a time"], env=run_env, check=True, capture_output=True,
                       text=True)
    print(r.stdout, end="")
    assert r.stdout.startswith("Once upon a time, there was a little girl named Lily."), r.stdout
    assert "generated: 16 tokens" in r.stderr, r.stderr

    # the other examples compile the same way (C++17 one: only with a C++ compiler)
    for source in ("chat.c", "json_extract.c", "rag.c"):
        build(source, cc, "-std=c11")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx):
        build("embed_game.cpp", cxx, "-std=c++17", "-pthread")
    headers = [f for _, _, fs in os.walk(stage) for f in fs if f.endswith(".h")]
    assert sorted(headers) == ["bonsai.h", "bonsai_version.h"], headers
    print("install: ok")
