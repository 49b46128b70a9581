"""Shared helpers of the binding's tests: where things are, skipping without test data, and a
main() whose exit status meson understands (0 pass, 1 fail, 77 everything skipped)."""
import os
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BINDING_DIR = os.path.dirname(HERE)  # bindings/python
SOURCE_ROOT = os.path.dirname(os.path.dirname(BINDING_DIR))
HEADER = os.path.join(SOURCE_ROOT, "include", "bonsai", "bonsai.h")
MAP_FILE = os.path.join(SOURCE_ROOT, "lib", "bonsai.map")
EXAMPLES_DIR = os.path.join(SOURCE_ROOT, "examples")

if BINDING_DIR not in sys.path:  # also runnable without PYTHONPATH
    sys.path.insert(0, BINDING_DIR)

LILY = ", there was a little girl named Lily."


def require_data() -> bool:
    return os.environ.get("BONSAI_REQUIRE_TEST_DATA") == "1"


def missing(what: str):
    """Skip the test (or class) for missing test data, or fail under
    BONSAI_REQUIRE_TEST_DATA=1."""
    if require_data():
        raise AssertionError("required test data missing: %s" % what)
    raise unittest.SkipTest("test data missing: %s" % what)


def data_dir() -> str:
    return os.environ.get("BONSAI_TEST_DATA") or os.path.join(SOURCE_ROOT, "..", "shared", "data")


def data_file(name: str) -> str:
    """Path of a file of the shared test data, or skip."""
    path = os.path.join(data_dir(), name)
    if not os.path.exists(path):
        missing(path)
    return path


def stories() -> str:
    """stories260K.gguf: a real tiny llama model."""
    return data_file("stories260K.gguf")


def qwen3_tiny() -> str:
    """The tiny Qwen3-shaped model with random weights and the real tokenizer (built by meson,
    path in BONSAI_TEST_QWEN3_TINY), or skip."""
    path = os.environ.get("BONSAI_TEST_QWEN3_TINY", "")
    if not path or not os.path.exists(path):
        missing("the tiny qwen3 model (BONSAI_TEST_QWEN3_TINY=%r)" % path)
    return path


THREAD_ERRORS = []


def _excepthook(args):
    THREAD_ERRORS.append(args)
    _previous_excepthook(args)


_previous_excepthook = threading.excepthook
threading.excepthook = _excepthook  # an exception escaping any thread fails the run


def main():
    """Run the tests of the calling module; exit 1 on a failure or an exception that escaped a
    thread, 77 when every test was skipped."""
    module = sys.modules["__main__"]
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    if len(sys.argv) > 1:  # names of tests to run, e.g. ModelTest.test_metadata
        suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:], module)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        sys.exit(1)
    if THREAD_ERRORS:
        print("FAILED: %d exception(s) escaped a thread" % len(THREAD_ERRORS))
        sys.exit(1)
    # (a class skipped in setUpClass counts one skip and no test run)
    if result.skipped and result.testsRun <= len(result.skipped):
        sys.exit(77)
    sys.exit(0)
