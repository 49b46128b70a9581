#!/usr/bin/env python3
"""Packaging and loading: the library lookup order (LIBBONSAI_LIBRARY, the package directory),
the ABI check at import, pyproject.toml, and what `meson install` installs."""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

import _util

import libbonsai
from libbonsai import _lib

PACKAGE_DIR = os.path.join(_util.BINDING_DIR, "libbonsai")
MODULES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(PACKAGE_DIR, "*.py")))


def python(code, env_overrides, pythonpath):
    env = {k: v for k, v in os.environ.items() if k not in ("LIBBONSAI_LIBRARY", "PYTHONPATH")}
    env.update({k: v for k, v in env_overrides.items() if v is not None})
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


def compile_fake_library(tmp, source):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        raise unittest.SkipTest("no C compiler")
    src = os.path.join(tmp, "fake.c")
    lib = os.path.join(tmp, "libfake.so")
    with open(src, "w") as f:
        f.write(source)
    subprocess.run([cc, "-shared", "-fPIC", src, "-o", lib], check=True)
    return lib


class LoadingTest(unittest.TestCase):
    def test_env_variable(self):
        r = python("import libbonsai; print(libbonsai.library_path())",
                   {"LIBBONSAI_LIBRARY": _lib.path}, _util.BINDING_DIR)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), _lib.path)
        bogus = os.path.join(tempfile.gettempdir(), "no-such-libbonsai.so")
        r = python("import libbonsai", {"LIBBONSAI_LIBRARY": bogus}, _util.BINDING_DIR)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)
        self.assertIn(bogus, r.stderr)
        self.assertIn("LIBBONSAI_LIBRARY", r.stderr)

    def test_package_directory(self):
        with tempfile.TemporaryDirectory() as tmp:
            pkg = os.path.join(tmp, "libbonsai")
            shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(_lib.path, os.path.join(pkg, "libbonsai.so.%d" % _lib.ABI_VERSION))
            r = python("import libbonsai; print(libbonsai.library_path())", {}, tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.strip(),
                             os.path.join(pkg, "libbonsai.so.%d" % _lib.ABI_VERSION))

    def test_install_libdir(self):
        """Last in the lookup: the library directory recorded by `meson install`."""
        # (asked in a fresh process: this one has loaded the build's libbonsai.so.1 already)
        r = python("import ctypes, ctypes.util\ntry:\n    ctypes.CDLL('libbonsai.so.%d')\n"
                   "except OSError:\n    print(ctypes.util.find_library('bonsai'))\n"
                   % _lib.ABI_VERSION, {}, "")
        if r.stdout.strip() != "None":
            self.skipTest("a libbonsai is installed where the system loader finds it")
        with tempfile.TemporaryDirectory() as tmp:
            pkg = os.path.join(tmp, "libbonsai")
            shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
            libdir = os.path.dirname(os.path.abspath(_lib.path))
            with open(os.path.join(pkg, "_build_config.py"), "w") as f:
                f.write("LIBDIR = %r\n" % libdir)
            r = python("import libbonsai; print(libbonsai.library_path())", {}, tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(os.path.dirname(r.stdout.strip()), libdir)
            os.remove(os.path.join(pkg, "_build_config.py"))
            r = python("import libbonsai", {}, tmp)  # nowhere left to look
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("cannot load the shared library", r.stderr)

    def test_abi_mismatch(self):
        with tempfile.TemporaryDirectory() as tmp:
            lib = compile_fake_library(tmp, "unsigned bonsai_abi_version(void) { return 7; }\n")
            r = python("import libbonsai", {"LIBBONSAI_LIBRARY": lib}, _util.BINDING_DIR)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("ImportError", r.stderr)
            self.assertIn("ABI version 7", r.stderr)
            self.assertIn("ABI version %d" % _lib.ABI_VERSION, r.stderr)

    def test_older_library_lacking_functions(self):
        """A library of the same ABI that lacks newer functions still loads; calling a missing
        one raises NotImplementedError."""
        with tempfile.TemporaryDirectory() as tmp:
            lib = compile_fake_library(tmp, (
                "unsigned bonsai_abi_version(void) { return %d; }\n"
                "const char *bonsai_version_string(void) { return \"0.0.1\"; }\n"
                "void bonsai_sampler_params_init(void *p) { (void)p; }\n")
                % _lib.ABI_VERSION)
            code = ("import libbonsai\nfrom libbonsai import _lib\n"
                    "print(libbonsai.library_version())\n"
                    "print(len(_lib.MISSING) == len(_lib.FUNCTIONS) - 3)\n"
                    "try:\n    libbonsai.backends()\n"
                    "except NotImplementedError as e:\n    print('missing:', e)\n")
            r = python(code, {"LIBBONSAI_LIBRARY": lib}, _util.BINDING_DIR)
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.splitlines()
            self.assertEqual(lines[:2], ["0.0.1", "True"])
            self.assertIn("bonsai_backend_count", lines[2])

    def test_fields_an_older_library_lacks(self):
        import ctypes
        p = _lib.bonsai_session_params()
        _lib.lib.bonsai_session_params_init(ctypes.byref(p))
        self.assertEqual(p.struct_size, ctypes.sizeof(p))  # the build's library is current
        _lib.set_field(p, "max_memory", 1 << 20)
        self.assertEqual(p.max_memory, 1 << 20)
        p.struct_size = _lib.bonsai_session_params.max_memory.offset  # as an older one writes
        _lib.set_field(p, "max_memory", 0)
        with self.assertRaises(NotImplementedError):
            _lib.set_field(p, "max_memory", 1 << 20)

    def test_not_a_library(self):
        r = python("import libbonsai", {"LIBBONSAI_LIBRARY": _util.HEADER}, _util.BINDING_DIR)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)


class PackagingTest(unittest.TestCase):
    def test_pyproject(self):
        try:
            import tomllib
        except ImportError:
            self.skipTest("tomllib needs Python 3.11")
        with open(os.path.join(_util.BINDING_DIR, "pyproject.toml"), "rb") as f:
            meta = tomllib.load(f)
        self.assertEqual(meta["project"]["name"], "libbonsai")
        self.assertEqual(meta["project"]["version"], libbonsai.__version__)
        self.assertEqual(meta["project"].get("dependencies", []), [])  # standard library only
        self.assertEqual(meta["tool"]["setuptools"]["packages"], ["libbonsai"])
        self.assertTrue(os.path.exists(os.path.join(_util.BINDING_DIR,
                                                    meta["project"]["readme"])))

    def test_meson_installs_every_module(self):
        text = open(os.path.join(_util.SOURCE_ROOT, "bindings", "meson.build")).read()
        listed = sorted(os.path.basename(p) for p in
                        __import__("re").findall(r"'python/libbonsai/(\w+\.py)'", text))
        self.assertEqual(listed, MODULES)

    def test_meson_install_plan(self):
        build_root = os.environ.get("BONSAI_BUILD_ROOT")
        meson = shutil.which("meson")
        if not build_root or not meson or "BONSAI_PYTHON_INSTALL" not in os.environ:
            self.skipTest("needs the meson build (BONSAI_BUILD_ROOT, BONSAI_PYTHON_INSTALL) "
                          "and meson")
        installed = json.loads(subprocess.run([meson, "introspect", "--installed", build_root],
                                              check=True, capture_output=True,
                                              text=True).stdout)
        targets = {os.path.basename(os.path.dirname(dst)) + "/" + os.path.basename(dst): src
                   for src, dst in installed.items() if dst.endswith(".py")}
        want = os.environ.get("BONSAI_PYTHON_INSTALL") == "1"
        for module in MODULES + ["_build_config.py"]:
            with self.subTest(module=module):
                self.assertEqual("libbonsai/" + module in targets, want)
        if want:
            config = {}
            exec(open(targets["libbonsai/_build_config.py"]).read(), config)
            options = json.loads(subprocess.run([meson, "introspect", "--buildoptions",
                                                 build_root], check=True, capture_output=True,
                                                text=True).stdout)
            opt = {o["name"]: o["value"] for o in options}
            self.assertEqual(config["LIBDIR"], os.path.join(opt["prefix"], opt["libdir"]))

    def test_meson_installs_where_python_looks(self):
        """`meson install` puts the package in a directory on the path of the Python it found,
        when that Python has one under the prefix: Debian's python3 with the default /usr/local
        (where Meson 1.0 alone picks /usr/local/lib/python3/dist-packages, which it does not
        search), and a virtual environment as the prefix."""
        meson = shutil.which("meson")
        if not meson:
            self.skipTest("needs meson")
        pythons = []
        if os.access("/usr/bin/python3", os.X_OK):
            pythons.append(("/usr/bin/python3", "/usr/local"))
        with tempfile.TemporaryDirectory() as tmp:
            venv = os.path.join(tmp, "venv")
            made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv],
                                  capture_output=True)
            if made.returncode == 0:
                pythons.append((os.path.join(venv, "bin", "python3"), venv))
            if not pythons:
                self.skipTest("neither /usr/bin/python3 nor a virtual environment")
            for i, (exe, prefix) in enumerate(pythons):
                with self.subTest(python=exe, prefix=prefix):
                    build = os.path.join(tmp, "build%d" % i)
                    env = dict(os.environ)
                    env["PATH"] = os.path.dirname(exe) + os.pathsep + env.get("PATH", "")
                    setup = subprocess.run(
                        [meson, "setup", build, _util.SOURCE_ROOT, "--prefix=" + prefix,
                         "-Dcuda=disabled", "-Dtests=false", "-Dexamples=false",
                         "-Dpython=enabled"], env=env, capture_output=True, text=True)
                    self.assertEqual(setup.returncode, 0, setup.stdout + setup.stderr)
                    self.assertIn("python3 found: YES (%s)" % exe, setup.stdout)
                    installed = json.loads(subprocess.run(
                        [meson, "introspect", "--installed", build], check=True,
                        capture_output=True, text=True).stdout)
                    dirs = {os.path.dirname(os.path.dirname(dst)) for dst in installed.values()
                            if dst.endswith("/libbonsai/__init__.py")}
                    self.assertEqual(len(dirs), 1, installed)
                    path = subprocess.run([exe, "-c", "import sys; print(chr(10).join(sys.path))"],
                                          check=True, capture_output=True, text=True).stdout
                    self.assertIn(dirs.pop(), path.splitlines())

    def test_docstrings(self):
        """Every public class, function, method and property has a docstring."""
        import inspect
        missing = []
        for name in libbonsai.__all__:
            obj = getattr(libbonsai, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
                missing.append(name)
            if inspect.isclass(obj) and obj.__module__.startswith("libbonsai"):
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(value, property):
                        value = value.fget
                    elif isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    elif not inspect.isfunction(value):
                        continue
                    if not (value.__doc__ or "").strip():
                        missing.append("%s.%s" % (name, attr))
        self.assertEqual(missing, [])
        self.assertGreater(len(libbonsai.__all__), 40)

    def test_pip_wheel(self):
        try:
            import setuptools  # noqa: F401
            import wheel  # noqa: F401
        except ImportError:
            self.skipTest("building a wheel offline needs setuptools and wheel installed")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", tmp, _util.BINDING_DIR], check=True,
                           capture_output=True)
            wheels = glob.glob(os.path.join(tmp, "libbonsai-*.whl"))
            self.assertEqual(len(wheels), 1)
            names = zipfile.ZipFile(wheels[0]).namelist()
            self.assertEqual(sorted(n.split("/")[1] for n in names
                                    if n.startswith("libbonsai/")), MODULES)
            self.assertFalse(any("tests" in n for n in names), names)


if __name__ == "__main__":
    _util.main()
