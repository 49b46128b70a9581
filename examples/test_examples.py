#!/usr/bin/env python3
"""Run one example program on real small models and check what it prints.

usage: test_examples.py NAME EXECUTABLE STORIES260K.gguf QWEN3_TINY.gguf

stories260K is a real trained TinyStories model (llama, SentencePiece); the tiny Qwen3 model has
random weights (its text is gibberish) with the real Qwen3 tokenizer and chat format. Exits 77
(skip) when a model is missing, or fails instead under BONSAI_REQUIRE_TEST_DATA=1.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

NAME, EXE, STORIES, QWEN3 = sys.argv[1:5]
TIMEOUT = 120
LILY = "Once upon a time, there was a little girl named Lily."


def require(path, what):
    if path and os.path.exists(path):
        return
    if os.environ.get("BONSAI_REQUIRE_TEST_DATA") == "1":
        sys.exit(f"FAIL: required test data missing: {what} ({path or 'not built'})")
    print(f"SKIP: test data missing: {what} ({path or 'not built'})")
    sys.exit(77)


def run(*args, stdin=None, rc=0):
    """Runs the example; checks its exit status (rc None: any) and returns (stdout, stderr)."""
    r = subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True,
                       errors="replace", timeout=TIMEOUT)
    if rc is not None and r.returncode != rc:
        raise AssertionError(f"{os.path.basename(EXE)} {' '.join(args)}: exit {r.returncode}, "
                             f"expected {rc}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r.stdout, r.stderr


def check(cond, message, *context):
    if not cond:
        raise AssertionError(message + "".join("\n---\n" + str(c) for c in context))


def check_error(args, stdin=None, expect=None):
    """A failure: exit 1 and an 'error:' line (the library's message) on stderr."""
    _, err = run(*args, stdin=stdin, rc=1)
    check(err.startswith("error: ") or "\nerror: " in err, "no error message", err)
    if expect:
        check(expect in err, f"error message does not mention {expect!r}", err)


# --------------------------------------------------------------------------------------------
def test_model_info():
    out, _ = run(STORIES)
    check("architecture 'llama'" in out and "48 tensors" in out, "wrong description", out)
    check_error(["/nonexistent/model.gguf"], expect="/nonexistent/model.gguf")
    run(rc=2)


# --------------------------------------------------------------------------------------------
def stats_of(err):
    m = re.search(r"generated: (\d+) tokens .*stopped: ([a-z ]+);", err)
    check(m is not None, "no statistics on stderr", err)
    return int(m.group(1)), m.group(2)


def test_simple():
    # greedy: the model's known continuation, streamed after the prompt
    out, err = run("-n", "40", "--temp", "0", STORIES, "Once upon a time")
    check(out.startswith(LILY), "greedy continuation is not the Lily story", out)
    check(stats_of(err) == (40, "token limit"), "expected 40 tokens and a token limit", err)
    check(LILY not in err, "generated text went to stderr", err)
    # -n is honoured
    out, err = run("-n", "3", "--temp", "0", STORIES, "Once upon a time")
    check(stats_of(err)[0] == 3 and out.strip() == "Once upon a time, there was",
          "-n 3 should give exactly three tokens", out, err)
    # sampling: the same seed gives the same text, other seeds other texts
    texts = [run("-n", "48", "--temp", "1.5", "--seed", str(s), STORIES, "Once upon a time")[0]
             for s in (1, 1, 2, 3, 4)]
    check(texts[0] == texts[1], "same seed, different text", *texts[:2])
    check(len(set(texts[1:])) > 1, "--temp/--seed have no effect", *texts)
    check_error(["/nonexistent/model.gguf", "hi"], expect="/nonexistent/model.gguf")
    run(STORIES, rc=2)
    run("-n", "x", STORIES, "hi", rc=2)


# --------------------------------------------------------------------------------------------
TURN = re.compile(r"\[turn (\d+): prompt (\d+) tokens \((\d+) reused from the cache\), "
                  r"reply (\d+) tokens")


def turns(err):
    return [tuple(int(x) for x in m.groups()) for m in TURN.finditer(err)]


def replies(out):
    """The transcript as [(message, reply)], from '> message' lines."""
    parts = re.split(r"^> (.*)\n", out, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def test_chat():
    args = ["--stats", "-n", "12", "--temp", "0.8", "--seed", "7", QWEN3]
    script = "Hello there\nWhat is your name?\n/foo\n/reset\nHello there\n/exit\nNever sent\n"
    out, err = run(*args, stdin=script)
    t = turns(err)
    check(len(t) == 3, "expected three turns (the one after /exit must not run)", out, err)
    (n1, p1, r1, g1), (n2, p2, r2, g2), (n3, p3, r3, g3) = t
    check(r1 == 0 and g1 == 12, "first turn: nothing to reuse, 12 tokens", err)
    # the second turn extends the conversation kept in the cache: it reuses the first turn
    check(p2 > p1 + g1 and r2 >= p1 + g1 - 1, "second turn does not continue the first", err)
    # after /reset the conversation starts over, and the same seed gives the same reply
    check(p3 == p1, "/reset did not start a new conversation", err)
    tr = replies(out)
    check([m for m, _ in tr] == ["Hello there", "What is your name?", "/foo", "/reset",
                                 "Hello there", "/exit"], "wrong transcript", out)
    check(tr[0][1].strip() != "", "empty reply", out)
    check(tr[0][1] == tr[4][1], "same conversation and seed after /reset, different reply", out)
    check("(new conversation)" in tr[3][1], "/reset not acknowledged", out)
    check("unknown command" in err, "/foo not reported", err)
    check("Never sent" not in out, "input after /exit was read", out)

    # the end of the input ends the program too; one turn each to compare prompt sizes
    def first_prompt(*extra):
        _, err = run("--stats", "-n", "4", *extra, QWEN3, stdin="Hi\n")
        t = turns(err)
        check(len(t) == 1, "expected one turn", err)
        return t[0][1]

    plain = first_prompt()
    check(first_prompt("--think") < plain,
          "--think should drop the empty <think></think> block from the prompt")
    check(first_prompt("-s", "You are a terse pirate who answers in rhymes.") > plain + 8,
          "the system prompt is not in the conversation")
    # a message too long for the context is an error, and the chat goes on
    long_message = "word " * 400
    out, err = run("--stats", "-n", "4", "-c", "128", QWEN3, stdin=long_message + "\nHi\n")
    check("error: " in err and len(turns(err)) == 1, "context-full message not survived", err)
    check_error(["/nonexistent/model.gguf"], stdin="Hi\n", expect="/nonexistent/model.gguf")
    run(rc=2)


# --------------------------------------------------------------------------------------------
def validate(value, schema, where="$"):
    """The JSON Schema subset the constraint supports: type, properties/required, items, enum."""
    if "enum" in schema:
        check(value in schema["enum"], f"{where}: {value!r} not in the enum")
        return
    t = schema.get("type")
    ok = {"string": lambda v: isinstance(v, str),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "boolean": lambda v: isinstance(v, bool),
          "null": lambda v: v is None,
          "array": lambda v: isinstance(v, list),
          "object": lambda v: isinstance(v, dict)}[t](value)
    check(ok, f"{where}: {value!r} is not of type {t}")
    if t == "object":
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            check(key in value, f"{where}: required key {key!r} missing")
        for key, v in value.items():
            check(key in props, f"{where}: unexpected key {key!r}")
            validate(v, props[key], f"{where}.{key}")
    elif t == "array":
        for i, v in enumerate(value):
            validate(v, schema["items"], f"{where}[{i}]")


def parse_json(out):
    try:
        return json.loads(out)
    except ValueError as e:
        raise AssertionError(f"output does not parse as JSON: {e}\n---\n{out}")


DEFAULT_SCHEMA = {"type": "object",
                  "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                 "city": {"type": "string"}},
                  "required": ["name", "age", "city"]}
TASK_SCHEMA = {"type": "object",
               "properties": {"title": {"type": "string"},
                              "tags": {"type": "array", "items": {"type": "string"}},
                              "priority": {"enum": ["low", "high"]},
                              "done": {"type": "boolean"}, "score": {"type": "number"},
                              "owner": {"type": "object",
                                        "properties": {"name": {"type": "string"}},
                                        "required": ["name"]}},
               "required": ["title", "priority", "done", "owner"]}


def test_json_extract():
    text = "Maria Lopez is 34 years old and moved to Lisbon last spring.\n"
    with tempfile.TemporaryDirectory() as tmp:
        text_file = os.path.join(tmp, "person.txt")
        with open(text_file, "w") as f:
            f.write(text)
        # the built-in schema, greedy and with several seeds (random weights: the constraint
        # alone makes the output valid)
        outputs = []
        for args in (["-n", "128"], *(["-n", "96", "--temp", "1", "--seed", str(s)]
                                      for s in range(1, 6))):
            out, _ = run(*args, QWEN3, stdin=text)
            doc = parse_json(out)
            validate(doc, DEFAULT_SCHEMA)
            check(sorted(doc) == ["age", "city", "name"], "keys", out)
            outputs.append(out)
        check(len(set(outputs[1:])) > 1, "seeds have no effect", *outputs)
        # the text from a file gives what stdin gave
        out, _ = run("-n", "128", QWEN3, text_file)
        check(out == outputs[0], "file and stdin inputs differ", out, outputs[0])
        # a schema from a file: nested object, array, enum, boolean, number
        schema_file = os.path.join(tmp, "task.schema.json")
        with open(schema_file, "w") as f:
            json.dump(TASK_SCHEMA, f)
        for seed in (1, 2, 3):
            out, _ = run("--schema", schema_file, "-n", "160", "--temp", "1", "--seed",
                         str(seed), QWEN3, stdin="Fix the roof before May; Bob owns it. Urgent.")
            validate(parse_json(out), TASK_SCHEMA)
        # too few tokens for any complete document: an error, never broken JSON on stdout
        out, err = run("-n", "4", QWEN3, text_file, rc=1)
        check(out == "" and "incomplete" in err, "an incomplete document was printed", out, err)
        # schema keywords outside the supported subset are refused by name
        bad = os.path.join(tmp, "bad.schema.json")
        with open(bad, "w") as f:
            f.write('{"type": "string", "pattern": "^a+$"}')
        check_error(["--schema", bad, QWEN3, text_file], expect="pattern")
        check_error(["--schema", os.path.join(tmp, "missing.json"), QWEN3, text_file])
    run(rc=2)


# --------------------------------------------------------------------------------------------
DOCS = {
    "rivers.txt": "The Nile flows north through eleven countries before it reaches the "
                  "Mediterranean Sea. For a long time it was thought to be the longest river in "
                  "the world. The Amazon carries more water than any other river, and its basin "
                  "covers much of South America.\n",
    "cooking.txt": "To bake bread, mix flour, water, salt and yeast, then knead the dough for "
                   "ten minutes. Let it rise in a warm place until it doubles in size. Bake it in "
                   "a hot oven until the crust is golden brown and the loaf sounds hollow when "
                   "tapped.\n",
    "music.txt": "A string quartet has two violins, a viola and a cello. Johann Sebastian Bach "
                 "wrote many fugues for the organ and the harpsichord. Jazz grew out of blues "
                 "and ragtime in New Orleans at the start of the twentieth century.\n",
    "space.txt": "".join(f"{s} {s.replace('The ', 'This ')}\n" for s in (
        "The Moon orbits the Earth once every twenty-seven days and always shows the same face "
        "to us.",
        "Mars is called the red planet because iron oxide dust covers its surface and colours "
        "its sky.",
        "Jupiter is the largest planet in the solar system, and its great red spot is a storm "
        "larger than the Earth.",
        "Saturn has bright rings made of ice and rock, and its moon Titan has lakes of liquid "
        "methane.",
        "The Voyager probes were launched in 1977 and are now travelling through interstellar "
        "space.",
        "A light year is the distance that light travels in one year, nearly ten trillion "
        "kilometres.",
        "Neutron stars are the collapsed cores of massive stars, so dense that a spoonful would "
        "weigh a billion tonnes.",
        "The Hubble telescope has photographed galaxies that formed less than a billion years "
        "after the Big Bang.")),
    "notes.md": "Not a .txt file: never indexed. The Nile flows north through eleven "
                "countries.\n",
}
HIT = re.compile(r"^(\d+)\. (-?[0-9.]+) (\S+) #(\d+): ", re.M)


def retrieve(folder, question, *args, model=None):
    out, err = run(*args, model or QWEN3, folder, question)
    m = re.search(r"indexed (\d+) chunks", out)
    check(m is not None, "no index summary", out)
    hits = [(int(r), float(s), f, int(c)) for r, s, f, c in HIT.findall(out)]
    check([h[0] for h in hits] == list(range(1, len(hits) + 1)), "bad ranking lines", out)
    check(all(a[1] >= b[1] for a, b in zip(hits, hits[1:])), "not sorted by score", out)
    return int(m.group(1)), hits, out


def test_rag():
    with tempfile.TemporaryDirectory() as folder:
        for name, text in DOCS.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        # Random weights embed nothing semantic, but the model is causal: a question that starts
        # a chunk shares the first hidden states of that chunk exactly, so it must come first,
        # well ahead of the rest. The answer comes through the Qwen3 chat format.
        for name in ("rivers.txt", "cooking.txt", "music.txt"):
            question = DOCS[name].split(". ")[0] + "."
            n, hits, out = retrieve(folder, question, "--chunk", "48", "-n", "16")
            check(n >= 8, "the long file was not cut into chunks", out)
            check(len(hits) == 3, "expected the top 3", out)
            check(hits[0][2:] == (name, 0) and hits[0][1] > 0.7 and hits[1][1] < hits[0][1] - 0.2,
                  f"'{question}' should retrieve {name} #0 first", out)
            check("notes.md" not in out, "a file that is not .txt was indexed", out)
            check(re.search(r"^answer: ", out, re.M), "no answer", out)
        # every chunk of the long file, and only -k of them
        n, hits, out = retrieve(folder, "stars", "--chunk", "32", "-k", "100", "-n", "0")
        space = sorted(c for _, _, f, c in hits if f == "space.txt")
        check(len(hits) == n and space == list(range(len(space))) and len(space) >= 6,
              "chunks of space.txt missing or misnumbered", out)
        check("answer:" not in out, "-n 0 should skip the answer", out)
        _, hits, out = retrieve(folder, "stars", "-k", "2", "-n", "0")
        check(len(hits) == 2, "-k 2 should list two chunks", out)
        # a trained model: sentences from the middle of a file find their file
        for name, question in (("music.txt", "Jazz grew out of blues and ragtime in New Orleans"),
                               ("space.txt", "A light year is the distance that light travels"),
                               ("cooking.txt", "To bake bread, mix flour, water, salt and yeast")):
            _, hits, out = retrieve(folder, question, "--chunk", "48", "-n", "0", model=STORIES)
            check(hits[0][2] == name, f"'{question}' should retrieve {name} first", out)
        # failures
        empty = os.path.join(folder, "empty")
        os.mkdir(empty)
        check_error([QWEN3, empty, "anything"], expect="no text")
        check_error([QWEN3, os.path.join(folder, "missing"), "anything"])
        check_error(["/nonexistent/model.gguf", folder, "anything"],
                    expect="/nonexistent/model.gguf")
    run(rc=2)


# --------------------------------------------------------------------------------------------
def test_embed_game():
    # a budget of 15 frames: the frame loop cancels, the worker stops and is joined, exit 0
    out, _ = run("--frames", "15", QWEN3, "Hello")
    check("[frame   16] budget spent: cancelling" in out, "no cancellation at the budget", out)
    m = re.search(r"finished at frame (\d+) .*: cancelled, (\d+) tokens.*text arrived in (\d+) "
                  r"frames", out)
    check(m is not None, "generation not reported as cancelled", out)
    # pieces reached the frame loop while it kept running: several frames got text (when the
    # machine was fast enough to produce two tokens within the budget: not under sanitizers)
    if int(m.group(2)) >= 2:
        check(int(m.group(3)) >= 2, "all the text arrived in one frame: the frame loop blocked",
              out)
    slowest = re.search(r"slowest frame ([0-9.]+) ms", out)
    check(slowest is not None and float(slowest.group(1)) < 50, "a frame waited for the model",
          out)
    check(int(m.group(1)) < 16 + 60, "the worker took more than a second to stop", out)
    # no budget: the trained model's story, streamed across frames, until the token limit
    out, _ = run("--frames", "0", "-n", "24", STORIES)
    check(LILY in out and "token limit, 24 tokens" in out and "cancel" not in out,
          "the story did not run to its token limit", out)
    # Ctrl-C in the middle of a generation is a cancellation too
    p = subprocess.Popen([EXE, "--frames", "0", QWEN3, "Hello"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        deadline = time.monotonic() + TIMEOUT
        seen = []
        for line in p.stdout:
            seen.append(line)
            if " tokens (" in line:  # text arrived: the worker is generating
                p.send_signal(signal.SIGINT)
                break
            check(time.monotonic() < deadline, "no text arrived", "".join(seen))
        rest, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(seen) + rest
    check(p.returncode == 0, f"exit {p.returncode} after Ctrl-C", out, err)
    check("interrupted: cancelling" in out and ": cancelled," in out, "Ctrl-C did not cancel",
          out)
    check_error(["/nonexistent/model.gguf"], expect="/nonexistent/model.gguf")
    run(rc=2)


# --------------------------------------------------------------------------------------------
TESTS = {"model_info": (test_model_info, False), "simple": (test_simple, False),
         "chat": (test_chat, True), "json_extract": (test_json_extract, True),
         "rag": (test_rag, True), "embed_game": (test_embed_game, True)}

if __name__ == "__main__":
    test, needs_qwen3 = TESTS[NAME]
    require(STORIES, "stories260K.gguf")
    if needs_qwen3:
        require(QWEN3, "the tiny Qwen3 model (needs qwen3-tokenizer.json)")
    test()
    print(f"example {NAME}: ok")
