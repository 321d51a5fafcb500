"""foodie.evaluation + tools/eval_food.py: parsing, statistics, resume, report and chart, the tiny model at chance."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from foodie.evaluation import (LETTERS, EvalConfig, binomial_test, build_questions, chance_range, evaluate,
                               mcnemar_exact, paired_bootstrap, parse_choice, read_predictions, wilson_interval)

REPO = Path(__file__).resolve().parent.parent
QUIET = Console(file=open("/dev/null", "w"))
CHOICES = ["北京烤鸭", "宫保鸡丁", "烤鸭", "Mapo tofu"]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    ("答案是（B）", 1),
    ("b.", 1),
    ("The answer is C because the dish is red.", 2),
    ("选项D", 3),
    ("A", 0),
    ("（Ｃ）宫保鸡丁", 2),  # full-width letter and brackets
    ("图B", 1),  # multi-image answers name an image letter
    ("Option (D)", 3),
    ("(c) something", 2),
    ("Answer: A", 0),  # the A of "Answer" is part of a word, the lone A is the answer
    ("宫保鸡丁", 1),  # choice text only
    ("我觉得是北京烤鸭。", 0),  # 烤鸭 is also a choice, but only as part of 北京烤鸭
    ("mapo TOFU, I think", 3),  # case-insensitive choice text
    ("", None),
    ("我不知道", None),
    ("a dish of noodles", None),  # an English article is not option a
    ("KFC", None),
    ("宫保鸡丁还是Mapo tofu？", None),  # two different choices named: cannot tell
    ("图中的菜是北京烤鸭。答案是宫保鸡丁。", 1),  # the text after the answer marker decides
    ("The dish is Peking duck... the answer is mapo tofu.", 3),
    ("答案是宫保鸡丁还是Mapo tofu？", None),  # two choices after the marker, nothing else: cannot tell
])
def test_parse_choice(response, expected):
    assert parse_choice(response, CHOICES) == expected


def test_parse_choice_reads_what_the_name_style_teaches():
    """Every training answer of the default style parses back to its own option (foodie.prompts.answer_text),
    though the dish named first may itself be one of the options (猪肉 in 猪肉炖粉条)."""
    from types import SimpleNamespace

    from foodie.prompts import answer_text
    choices = ["猪肉", "粉条", "鸡肉", "鱼"]
    for lang in ("zh", "en"):
        for answer in range(4):
            item = SimpleNamespace(task="sivqa", question="主要食材是什么？", question_en="Main ingredient?",
                                   choices=choices, choices_en=["pork", "vermicelli", "chicken", "fish"],
                                   answer=answer, images=["a.jpg"], food_name="猪肉炖粉条", cuisine="东北菜",
                                   food_meta={"food_name_en": "Pork stewed with vermicelli"}, raw={})
            text = answer_text(item, lang, "name")
            assert parse_choice(text, choices if lang == "zh" else item.choices_en) == answer, text


def test_parse_choice_without_choices_reads_letters_only():
    assert parse_choice("图C", None) == 2
    assert parse_choice("北京烤鸭", None) is None
    assert parse_choice(None, CHOICES) is None


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def test_statistics_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 10), (3, 10), (25, 100), (40, 100), (70, 256)]:
        assert binomial_test(k, n, 0.25) == pytest.approx(stats.binomtest(k, n, 0.25).pvalue, rel=1e-6)
        lo, hi = wilson_interval(k, n)
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-6)
    for a, b in [(10, 2), (5, 5), (0, 7)]:
        assert mcnemar_exact(a, b) == pytest.approx(stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-6)


def test_chance_range_and_bootstrap():
    lo, hi = chance_range(100)
    assert lo < 25 < hi and (lo, hi) == (17, 34)
    assert chance_range(0) == (0, 0)
    same = [True, False, True, True] * 10
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_bootstrap([False] * 30 + [True] * 10, [True] * 30 + [True] * 10)
    assert diff == pytest.approx(0.75) and lo <= 0.75 <= hi and lo > 0.5
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


# ---------------------------------------------------------------------------------------------
# Fake backends: the pipeline without a model (answers decided from the prompt)
# ---------------------------------------------------------------------------------------------

class FakeBackend:
    """Answers each request with answer(user text, image paths); counts what it was asked."""

    def __init__(self, answer, fail_after=None):
        self.answer, self.fail_after = answer, fail_after
        self.asked: list[str] = []
        self.batches = 0

    def generate(self, requests, params):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.batches += 1
        self.asked += [r[-1].text + "|" + ",".join(map(str, r[-1].images)) for r in requests]
        return [self.answer(r[-1].text, [Path(p).name for p in r[-1].images]) for r in requests]

    def close(self):
        pass


def guesser(text, images):
    """A model that knows nothing: a pseudo-random letter per question."""
    return f"答案是（{LETTERS[hashlib.sha256((text + str(images)).encode()).digest()[0] % 4]}）"


def fake_model(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"name": name}))
    return d


def loader(backends):
    return lambda model_dir, **kw: backends[Path(model_dir).name]


def test_a_guessing_model_scores_chance(small_foodieqa_dir, tmp_path):
    """Scoring has no bias: a guesser lands inside the range chance allows (99.9%, 144 questions)."""
    fake = FakeBackend(guesser)
    m = evaluate(EvalConfig(models=[str(fake_model(tmp_path, "guess"))], data_root=str(small_foodieqa_dir),
                            out=str(tmp_path / "out")), console=QUIET, load=loader({"guess": fake}))
    overall = m["models"][0]["overall"]
    assert overall["n"] == 144 and overall["unparsed"] == 0
    assert binomial_test(overall["correct"], overall["n"]) > 0.001


def test_comparison_of_two_models(small_foodieqa_dir, tmp_path):
    questions, _ = build_questions(small_foodieqa_dir, ("sivqa", "mivqa"), "zh")
    truth = {(q.prompt, str([Path(p).name for p in q.images])): LETTERS[q.answer] for q in questions}
    backends = {"guess": FakeBackend(guesser), "oracle": FakeBackend(lambda t, i: f"{truth[t, str(i)]}) 对")}
    out = tmp_path / "out"
    m = evaluate(EvalConfig(models=[str(fake_model(tmp_path, "guess")), str(fake_model(tmp_path, "oracle"))],
                            labels=["base", "tuned"], data_root=str(small_foodieqa_dir), out=str(out)),
                 console=QUIET, load=loader(backends))
    base, tuned = m["models"]
    assert tuned["overall"]["accuracy"] == 1.0
    c = m["comparisons"][0]
    assert (c["base"], c["other"]) == ("base", "tuned")
    d = c["overall"]
    assert d["difference"] == pytest.approx(1.0 - base["overall"]["accuracy"])
    assert 0 < d["ci95"][0] <= d["difference"] <= d["ci95"][1] and d["mcnemar_p"] < 1e-6
    assert d["base_only_correct"] == 0 and d["other_only_correct"] == base["overall"]["n"] - base["overall"]["correct"]
    report = (out / "report.md").read_text()
    assert "## Differences (paired, same questions)" in report
    assert "| tuned | base | all |" in report
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["base.jsonl", "tuned.jsonl"]


def test_interrupted_run_resumes(small_foodieqa_dir, tmp_path):
    """A killed run keeps its finished batches; a torn last line is asked again; nothing else is."""
    model = fake_model(tmp_path, "m")
    cfg = EvalConfig(models=[str(model)], data_root=str(small_foodieqa_dir), out=str(tmp_path / "out"),
                     batch_size=8, limit=20)  # 20 + 20 questions
    killed = FakeBackend(guesser, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, console=QUIET, load=loader({"m": killed}))
    preds = tmp_path / "out" / "predictions" / "m.jsonl"
    assert len(read_predictions(preds)) == 24 == len(killed.asked)
    # Tear the last line, as a kill in the middle of a write would.
    lines = preds.read_text().splitlines(keepends=True)
    preds.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

    again = FakeBackend(guesser)
    m = evaluate(cfg, console=QUIET, load=loader({"m": again}))
    assert len(again.asked) == 40 - 23
    assert not set(again.asked) & set(killed.asked[:23])
    assert m["runs"][0] == dict(label="m", reused=23, computed=17, seconds=m["runs"][0]["seconds"])
    rows = read_predictions(preds)
    assert len(rows) == 40 and len({r["item_id"] for r in rows}) == 40

    # Same model, prompts and items: nothing to do (the model is not even loaded).
    m2 = evaluate(cfg, console=QUIET, load=lambda *a, **k: pytest.fail("model loaded although all was done"))
    assert m2["models"][0]["overall"] == m["models"][0]["overall"]

    # Another language changes every prompt; other weights change the model: all asked again.
    en = FakeBackend(guesser)
    evaluate(EvalConfig(**{**cfg.__dict__, "lang": "en"}), console=QUIET, load=loader({"m": en}))
    assert len(en.asked) == 40
    # A different tile budget changes what the model sees: asked again, and the backend gets it.
    seen = {}
    tiles = FakeBackend(guesser)
    evaluate(EvalConfig(**{**cfg.__dict__, "max_tiles": 2}), console=QUIET,
             load=lambda model_dir, **kw: seen.update(kw) or tiles)
    assert len(tiles.asked) == 40 and seen["max_tiles"] == 2
    (model / "model.safetensors").write_bytes(b"other weights")
    changed = FakeBackend(guesser)
    evaluate(cfg, console=QUIET, load=loader({"m": changed}))
    assert len(changed.asked) == 40


def test_unparsed_answers_are_counted_never_guessed(small_foodieqa_dir, tmp_path):
    fake = FakeBackend(lambda t, i: "这个我不确定" if int(i[0][:2]) % 2 else "（A）")
    out = tmp_path / "out"
    m = evaluate(EvalConfig(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir),
                            out=str(out), tasks=("sivqa",)), console=QUIET, load=loader({"m": fake}))
    rows = read_predictions(out / "predictions" / "m.jsonl")
    unparsed = [r for r in rows if r["parsed"] is None]
    t = m["models"][0]["tasks"]["sivqa"]
    assert t["unparsed"] == len(unparsed) > 0 and not any(r["correct"] for r in unparsed)
    assert t["correct"] == sum(r["answer"] == "A" for r in rows if r["parsed"] == "A")
    assert "这个我不确定" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# The embedded default: the untrained tiny model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_eval(tiny_model_dir, small_foodieqa_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    cfg = EvalConfig(models=[str(tiny_model_dir)], data_root=str(small_foodieqa_dir), out=str(out),
                     backend="transformers", limit=16, batch_size=8, max_new_tokens=16)
    return evaluate(cfg, console=QUIET), out


def test_untrained_tiny_model_is_at_chance(tiny_eval):
    """Random weights cannot know dishes: accuracy is not above what guessing gives.

    "Near chance", statistically: the one-sided exact binomial test of "better than 25%" is not
    significant (p > 0.01) over all answers, nor over the parsed ones. A random model mostly emits
    text that names no option: such answers count as wrong (never replaced by a random guess), so
    its accuracy can sit below 25%, and the report shows how many answers were unparsed.
    """
    metrics, out = tiny_eval
    m = metrics["models"][0]
    rows = read_predictions(out / "predictions" / "tiny-internvl2.jsonl")
    assert len(rows) == m["overall"]["n"] == 32
    assert all(r["response"] is not None and r["backend"] == "transformers" for r in rows)

    def p_above_chance(k, n):
        return sum(math.comb(n, i) * 0.25 ** i * 0.75 ** (n - i) for i in range(k, n + 1))

    assert p_above_chance(m["overall"]["correct"], 32) > 0.01
    parsed = [r for r in rows if r["parsed"] is not None]
    assert p_above_chance(sum(r["correct"] for r in parsed), len(parsed)) > 0.01
    assert m["overall"]["unparsed"] == 32 - len(parsed)
    for task in ("sivqa", "mivqa"):
        t = m["tasks"][task]
        assert t["n"] == 16 and t["chance"]["range95"][0] <= 4 <= t["chance"]["range95"][1]


def test_report_and_chart_are_well_formed(tiny_eval):
    from PIL import Image

    metrics, out = tiny_eval
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["models"] == json.loads(json.dumps(metrics["models"]))
    assert {"lang", "models", "comparisons", "published", "runs", "settings"} <= set(saved)
    m = saved["models"][0]
    assert {"overall", "tasks", "label", "fingerprint", "backend"} <= set(m)
    for t in m["tasks"].values():
        assert {"n", "correct", "accuracy", "ci95", "unparsed", "by_question_type", "by_cuisine", "chance"} <= set(t)
        assert t["ci95"][0] <= t["accuracy"] <= t["ci95"][1]
        assert sum(g["n"] for g in t["by_cuisine"].values()) == t["n"] == sum(g["n"] for g in t["by_question_type"].values())
    assert len(m["tasks"]["sivqa"]["by_cuisine"]) > 1  # cuisines come from the data, not "unknown"

    report = (out / "report.md").read_text()
    table = [ln for ln in report.splitlines() if ln.startswith("| tiny-internvl2 |")]
    assert len(table) == 3  # sivqa, mivqa, all
    header = next(ln for ln in report.splitlines() if ln.startswith("| model | task | accuracy %"))
    assert all(ln.count("|") == header.count("|") for ln in table)
    for heading in ("## Accuracy", "## Accuracy by question type", "## Accuracy by cuisine", "## Unparsed answers",
                    "## Published FoodieQA results (for context)"):
        assert heading in report
    assert "GPT-4o | 72.66 | full set, by the authors" in report
    assert "![accuracy by model and task](accuracy.png)" in report

    with Image.open(out / "accuracy.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 600 and im.height > 300


def test_cli(tiny_model_dir, small_foodieqa_dir, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "tools" / "eval_food.py"), "--model", str(tiny_model_dir),
                          "--label", "tiny", "--data-root", str(small_foodieqa_dir), "--out", str(out),
                          "--tasks", "sivqa", "--limit", "3", "--lang", "en", "--backend", "transformers"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "FoodieQA accuracy (en)" in run.stderr  # the rich table
    rows = read_predictions(out / "predictions" / "tiny.jsonl")
    assert [r["task"] for r in rows] == ["sivqa"] * 3
    assert all(r["prompt"].endswith("my answer would be (") for r in rows)
    assert (out / "report.md").is_file() and (out / "accuracy.png").is_file()

    bad = subprocess.run([sys.executable, str(REPO / "tools" / "eval_food.py"), "--model", str(tmp_path / "nope"),
                          "--data-root", str(small_foodieqa_dir), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr and "config.json" in bad.stderr


def test_held_out_manifest_selects_items(small_foodieqa_dir, tmp_path):
    all_q, _ = build_questions(small_foodieqa_dir, ("sivqa", "mivqa"), "zh")
    keep = {"sivqa": [q.question_id for q in all_q if q.task == "sivqa"][:5],
            "mivqa": [q.question_id for q in all_q if q.task == "mivqa"][:2]}
    manifest = tmp_path / "held_out.json"
    manifest.write_text(json.dumps({"format": "foodie-held-out", "question_ids": keep}))
    qs, _ = build_questions(small_foodieqa_dir, ("sivqa", "mivqa"), "zh", items=manifest)
    assert {(q.task, q.question_id) for q in qs} == {(t, i) for t, ids in keep.items() for i in ids}

    manifest.write_text(json.dumps({"format": "foodie-held-out", "question_ids": {"sivqa": ["no-such-id"]}}))
    with pytest.raises(ValueError, match="no-such-id.*process_food"):
        build_questions(small_foodieqa_dir, ("sivqa",), "zh", items=manifest)


def test_prompts_are_the_authors_templates(small_foodieqa_dir):
    qs, root = build_questions(small_foodieqa_dir, ("sivqa", "mivqa"), "zh", limit=1)
    si, mi = qs
    assert si.prompt.endswith("请根据上图从所提供的选项中选择一个正确答案，为（") and "选项有: （A) " in si.prompt
    assert si.images and (root / si.images[0]).is_file() and si.choices
    assert mi.prompt.count("<image>") == 4 and mi.prompt.endswith("答案为：图") and mi.choices is None
