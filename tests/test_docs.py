"""The docs must stay true: every command they mark as CPU-runnable runs and exits 0, every command they show
for the GPU path uses scripts, options and make targets that exist, and every link and picture resolves —
links into the code must point at the lines that hold the symbol they name (tests/doc_links.py).

A fenced block is CPU-runnable when the line before its opening fence is `<!-- cpu-runnable -->`; the blocks
of one page run in order, in one bash session, from the repository root, with FOODIE_WORK pointing at a
temporary folder (so the embedded defaults are built there, never in the checkout).

An exercise's answer is a ```text block right after `<!-- answer: COMMAND -->`: every line of it must be a line
that COMMAND prints, so the pages' exercises and the tools cannot drift apart."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import doc_links  # tests/doc_links.py (tests/ is on sys.path)
import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MARKER = "<!-- cpu-runnable -->"


DOCS = doc_links.markdown_docs()


def fenced_blocks(doc: Path) -> list[tuple[int, str, bool, str]]:
    """(line number, info string, marked cpu-runnable, body) of every fenced code block."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(2), m.group(3).strip(), i
        marked = i > 0 and lines[i - 1].strip() == MARKER
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((start + 1, info, marked, "\n".join(body)))
        i += 1
    return blocks


def commands(body: str) -> list[str]:
    """Shell commands of a block: comments dropped, backslash continuations joined."""
    out, cur = [], ""
    for line in body.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    if cur:
        out.append(cur.strip())
    return out


RUNNABLE = [d for d in DOCS if d.exists() and any(marked for _, _, marked, _ in fenced_blocks(d))]


# ------------------------------------------------------------------------------------------------
# Links and pictures
# ------------------------------------------------------------------------------------------------

def test_docs_exist():
    names = {d.name for d in DOCS if d.exists()}
    assert {"multimodal_llm.md", "internvl2.md", "guide_gpu.md", "troubleshooting.md"} <= names


def test_links_and_images_resolve_and_code_anchors_hold_their_symbol():
    problems = doc_links.check([d for d in DOCS if d.exists()])
    assert not problems, "broken doc links (run `python tests/doc_links.py --fix` for drifted anchors):\n" + \
        "\n".join(problems)


def test_every_referenced_image_is_committed_or_generated():
    """Pictures must be in git (or written by a documented command into work/, which the docs say)."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    untracked_ok = set(subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO,
                                      capture_output=True, text=True).stdout.split())
    for doc in DOCS:
        if not doc.exists():
            continue
        for link in doc_links.links_in(doc):
            if link.is_image and not re.match(r"^[a-z]+:", link.target):
                rel = os.path.relpath((doc.parent / link.target.split("#")[0]).resolve(), REPO)
                # untracked-but-not-ignored counts while a helper works; ignored files (work/) never do
                assert rel in tracked or rel in untracked_ok, f"{link.where()}: image {rel} is ignored by git"


def test_link_checker_catches_rot(tmp_path):
    """The checker itself: a drifted anchor is reported and --fix moves it onto the symbol."""
    code = tmp_path / "mod.py"
    code.write_text("import os\n\n\nclass Model:\n    def __init__(self):\n        self.mlp1 = 1\n\n"
                    "    def pixel_shuffle(self, x):\n        return x\n\n\nTILE = 448\n")
    doc = tmp_path / "page.md"
    doc.write_text("# Title\n\n[`pixel_shuffle`](mod.py#L8-L9) [`Model.mlp1`](mod.py#L6) [`TILE`](mod.py#L1)\n"
                   "[`return x`](mod.py#L9) [`missing_fn`](mod.py#L2) [x](nothere.py) [h](#title) [h](#nope)\n"
                   "[no symbol](mod.py#L3)\n"
                   "see [`x = [`](mod.py#L6) and [`self.mlp1 = 1`](mod.py#L6) on one line\n")
    problems = doc_links.check([doc])
    text = "\n".join(problems)
    assert "`TILE` is defined at lines 12-12" in text
    assert "`missing_fn` is not in lines 2-2" in text
    assert "nothere.py does not exist" in text and "no heading #nope" in text
    assert "must name its symbol" in text
    assert "pixel_shuffle" not in text and "mlp1" not in text and "return x" not in text
    # a code span with an unbalanced bracket does not swallow the next link on the line
    assert "`x = [` is not in lines 6-6" in text
    doc_links.check([doc], fix=True)
    assert "[`TILE`](mod.py#L12)" in doc.read_text()


# ------------------------------------------------------------------------------------------------
# CPU-runnable commands
# ------------------------------------------------------------------------------------------------

def test_markers_sit_on_bash_blocks():
    for doc in DOCS:
        if not doc.exists():
            continue
        lines = doc.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if line.strip() == MARKER:
                nxt = lines[n + 1] if n + 1 < len(lines) else ""
                assert re.match(r"^```(bash|sh)\s*$", nxt), f"{doc.name}:{n + 1}: marker not followed by ```bash"


ALREADY_RAN: set[str] = set()


@pytest.fixture(scope="session")
def docs_work(tmp_path_factory, tiny_model_dir):
    """One FOODIE_WORK for all pages, holding a copy of the session's tiny model (so no page rebuilds it)."""
    work = tmp_path_factory.mktemp("docs-work")
    shutil.copytree(tiny_model_dir, work / "tiny-internvl2")
    return work


@pytest.mark.parametrize("doc", RUNNABLE, ids=[d.name for d in RUNNABLE])
def test_cpu_runnable_commands_exit_0(doc, docs_work):
    work = docs_work
    script = ["set -euo pipefail"]
    for line, _, marked, body in fenced_blocks(doc):
        if marked and body.strip() not in ALREADY_RAN:  # the same block on two pages runs once
            script += [f"echo '>>> {doc.name}:{line}'", body]
    env = dict(os.environ, FOODIE_WORK=str(work), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{doc.name}: a cpu-runnable block failed (exit {r.returncode})\n" \
                              f"--- stdout ---\n{r.stdout[-4000:]}\n--- stderr ---\n{r.stderr[-4000:]}"
    ALREADY_RAN.update(body.strip() for _, _, marked, body in fenced_blocks(doc) if marked)


# ------------------------------------------------------------------------------------------------
# GPU-path commands (not run here): scripts, options and make targets must exist
# ------------------------------------------------------------------------------------------------

SCRIPT = re.compile(r"(?:^|\s)(?:python3?|\$PY|\.venv/bin/python)\s+((?:tools|demo|bench|docs/examples)/[\w/]+\.py)"
                    r"((?:\s+(?![|;&])\S+)*)")


def all_commands():
    for doc in DOCS:
        if not doc.exists():
            continue
        for line, info, _, body in fenced_blocks(doc):
            if info.split()[:1] in (["bash"], ["sh"], ["shell"], ["console"]):
                for cmd in commands(body):
                    for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", cmd):
                        yield doc, line, part


@lru_cache(maxsize=None)
def static_options(script: str) -> set[str]:
    """The --options a tool spells out in its argparse calls (its own and its foodie main's): fast, no import."""
    source = (REPO / script).read_text(encoding="utf-8")
    for module in re.findall(r"^from (foodie(?:\.\w+)+) import main\b", source, re.M):  # thin wrapper tools
        source += (REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    calls = re.findall(r"add_argument\(([^)]*)", source)
    return {o for call in calls for o in re.findall(r"[\"'](--[\w-]+)[\"']", call)} | {"--help"}


@lru_cache(maxsize=None)
def help_options(script: str) -> set[str]:
    """The --options in the tool's --help (slow: imports the tool); used when the source does not spell one out."""
    r = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"`python {script} --help` failed:\n{r.stderr[-2000:]}"
    return set(re.findall(r"(?<![\w-])--[\w-]+", r.stdout))


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:", text, re.M))


def test_documented_commands_use_real_scripts_options_and_targets():
    uses: dict[str, set[str]] = {}
    problems = []
    targets = make_targets()
    for doc, line, part in all_commands():
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            words = part.split()
        words = [w for w in words if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)] or words  # drop VAR=value prefixes
        m = SCRIPT.search(" " + " ".join(words))
        if m:
            script = m.group(1)
            if not (REPO / script).is_file():
                problems.append(f"{doc.name}:{line}: {script} does not exist")
                continue
            rest = shlex.split(m.group(2), comments=True)
            rest = rest[:rest.index("--")] if "--" in rest else rest  # after a bare --: another program's options
            opts = {w.split("=")[0] for w in rest if w.startswith("--")}
            uses.setdefault(script, set()).update(opts)
        elif words[:1] == ["make"]:
            for w in words[1:]:
                if not w.startswith("-") and "=" not in w and w not in targets:
                    problems.append(f"{doc.name}:{line}: make target {w!r} is not in the Makefile")
        elif words[:2] == ["xtuner", "train"] and len(words) > 2:
            if not (REPO / words[2]).is_file() and not words[2].startswith("$"):
                problems.append(f"{doc.name}:{line}: config {words[2]} does not exist")
    for script, opts in uses.items():
        for opt in sorted(opts - static_options(script) - (help_options(script) if opts - static_options(script)
                                                            else set())):
            problems.append(f"{script}: option {opt} is shown in the docs but {script} does not define it")
    assert not problems, "\n".join(problems)


def test_command_checker_sees_options_and_continuations():
    """The checker itself: continuation lines are joined, comments dropped, options read from the tool."""
    body = ("# build\npython docs/examples/explain_image.py x.jpg \\\n    --max-tiles 4  # fewer tiles\n"
            "make train RESUME=1\n")
    assert [" ".join(c.split()) for c in commands(body)] == [
        "python docs/examples/explain_image.py x.jpg --max-tiles 4 # fewer tiles", "make train RESUME=1"]
    opts = static_options("docs/examples/explain_image.py")
    assert {"--max-tiles", "--out", "--list-grids"} <= opts and "--max-tile" not in opts
    assert "train" in make_targets() and "nonexistent-target" not in make_targets()


def test_committed_contact_sheet_is_what_the_documented_command_makes(tmp_path):
    """docs/images/example_mapo_tofu_tiles.png must be reproducible by the command internvl2.md gives for it."""
    import numpy as np
    from PIL import Image

    text = (REPO / "docs" / "internvl2.md").read_text(encoding="utf-8")
    cmd = ("python docs/examples/explain_image.py docs/images/example_mapo_tofu.jpg "
           "--out docs/images/example_mapo_tofu_tiles.png")
    assert cmd in text
    out = tmp_path / "sheet.png"
    r = subprocess.run([sys.executable, "docs/examples/explain_image.py", "docs/images/example_mapo_tofu.jpg",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    made = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    committed = np.asarray(Image.open(REPO / "docs/images/example_mapo_tofu_tiles.png").convert("RGB"), dtype=np.int16)
    assert made.shape == committed.shape
    assert np.abs(made - committed).mean() < 1.0  # identical up to font rendering differences


# ------------------------------------------------------------------------------------------------
# Exercises: the answers are what the tools print
# ------------------------------------------------------------------------------------------------

ANSWER = re.compile(r"^<!-- answer: (.+?) -->$")
TEACHING_DOCS = ("multimodal_llm.md", "internvl2.md")


def answer_blocks(doc: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, command, expected lines) of every `<!-- answer: COMMAND -->` + ```text block."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    found = []
    for n, line in enumerate(lines):
        m = ANSWER.match(line.strip())
        if not m:
            continue
        assert n + 1 < len(lines) and lines[n + 1].strip() == "```text", f"{doc.name}:{n + 1}: no ```text block"
        end = next(k for k in range(n + 2, len(lines)) if lines[k].strip() == "```")
        found.append((n + 1, m.group(1), [ln for ln in lines[n + 2:end] if ln.strip()]))
    return found


def test_each_teaching_page_ends_with_checked_exercises():
    for name in TEACHING_DOCS:
        text = (REPO / "docs" / name).read_text(encoding="utf-8")
        assert "## Exercises (练习)" in text, name
        tail = text[text.index("## Exercises (练习)"):]
        assert tail.count("<details><summary>Answer</summary>") >= 5, name
        assert len(answer_blocks(REPO / "docs" / name)) >= 5, name


def run_documented(command: str, work: Path) -> str:
    """stdout of a documented command; explain_image runs in this process (fast), anything else in bash."""
    words = shlex.split(command)
    if words[:2] == ["python", "docs/examples/explain_image.py"] and "$" not in command:
        spec = importlib.util.spec_from_file_location("explain_image_for_docs", REPO / words[1])
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert tool.main(words[2:]) == 0, command
        return out.getvalue()
    env = dict(os.environ, FOODIE_WORK=str(work), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg")
    r = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{command}\n{r.stderr[-2000:]}"
    return r.stdout


def test_exercise_answers_are_what_the_tools_print(tmp_path):
    printed: dict[str, set[str]] = {}
    problems = []
    for name in TEACHING_DOCS:
        for line, command, expected in answer_blocks(REPO / "docs" / name):
            if command not in printed:
                printed[command] = {ln.strip() for ln in run_documented(command, tmp_path).splitlines()}
            problems += [f"{name}:{line}: `{command}` no longer prints: {want.strip()}"
                         for want in expected if want.strip() not in printed[command]]
    assert not problems, "\n".join(problems)


def test_answer_checker_catches_a_wrong_answer(tmp_path):
    """The checker itself: a stale line is reported with its page and command."""
    doc = tmp_path / "page.md"
    doc.write_text("# P\n\n<!-- answer: python docs/examples/explain_image.py --size 448x448 -->\n```text\n"
                   "image 448x448 -> grid 1x1 (cols x rows) = 1 tile(s)\ntiles: 2\n```\n", encoding="utf-8")
    [(line, command, expected)] = answer_blocks(doc)
    out = {ln.strip() for ln in run_documented(command, tmp_path).splitlines()}
    assert line == 3 and expected[0] in out and expected[1] not in out
