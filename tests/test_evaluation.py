"""foodie.evaluation + foodie.report + tools/eval_food.py: questions, resume, report and chart, the tiny model at chance."""
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

from foodie.evaluation import build_questions, eval_settings, evaluate, read_predictions
from foodie.tasks import LETTERS
from foodie.scoring import authors_letter, option_text_reading
from foodie.stats import binomial_test

REPO = Path(__file__).resolve().parent.parent
QUIET = Console(file=open("/dev/null", "w"))


# ---------------------------------------------------------------------------------------------
# The diagnostic reading still reads what the name style teaches (foodie.scoring has the parser tests)
# ---------------------------------------------------------------------------------------------

def test_parse_choice_reads_what_the_name_style_teaches():
    """Every training answer of the name style parses back to its own option by the option-text diagnostic
    (foodie.prompts.answer_text), though the dish named first may itself be one of the options."""
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
            assert option_text_reading(text, choices if lang == "zh" else item.choices_en) == answer, text


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
    (d / "config.json").write_text(json.dumps({"name": name, "template": "internlm2-chat",  # what ModelSpec reads
                                               "vision_config": {"image_size": 448, "patch_size": 14}}))
    return d


def loader(backends):
    return lambda model_dir, **kw: backends[Path(model_dir).name]


def test_a_guessing_model_scores_chance(small_foodieqa_dir, tmp_path):
    """Scoring has no bias: a guesser lands inside the range chance allows (99.9%, 144 questions)."""
    fake = FakeBackend(guesser)
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "guess"))], data_root=str(small_foodieqa_dir),
                            out=str(tmp_path / "out")), console=QUIET, load=loader({"guess": fake}))
    overall = m["models"][0]["overall"]
    assert overall["n"] == 144 and overall["no_letter"] == 0
    assert overall["accuracy"] == overall["strict"]["accuracy"] == overall["seeded_guess"]["accuracy"]
    assert binomial_test(overall["letter_right"], overall["n"]) > 0.001


def test_comparison_of_two_models(small_foodieqa_dir, tmp_path):
    questions, _ = build_questions(small_foodieqa_dir, ("sivqa", "mivqa"), "zh")
    truth = {(q.prompt, str([Path(p).name for p in q.images])): LETTERS[q.answer] for q in questions}
    backends = {"guess": FakeBackend(guesser), "oracle": FakeBackend(lambda t, i: f"{truth[t, str(i)]}) 对")}
    out = tmp_path / "out"
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "guess")), str(fake_model(tmp_path, "oracle"))],
                            labels=["base", "tuned"], data_root=str(small_foodieqa_dir), out=str(out)),
                 console=QUIET, load=loader(backends))
    base, tuned = m["models"]
    assert tuned["overall"]["accuracy"] == 1.0
    c = m["comparisons"][0]
    assert (c["base"], c["other"]) == ("base", "tuned")
    d = c["overall"]
    assert d["difference"] == pytest.approx(1.0 - base["overall"]["accuracy"])
    assert 0 < d["ci95"][0] <= d["difference"] <= d["ci95"][1] and d["mcnemar_p"] < 1e-6
    assert d["base_only_correct"] == 0
    assert d["other_only_correct"] == base["overall"]["n"] - base["overall"]["seeded_guess"]["correct"]
    report = (out / "report.md").read_text()
    assert "## Differences (paired, same questions)" in report
    assert "| tuned | base | all |" in report
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["base.jsonl", "tuned.jsonl"]


def test_interrupted_run_resumes(small_foodieqa_dir, tmp_path):
    """A killed run keeps its finished batches; a torn last line is asked again; nothing else is."""
    model = fake_model(tmp_path, "m")
    cfg = eval_settings(models=[str(model)], data_root=str(small_foodieqa_dir), out=str(tmp_path / "out"),
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
    run = m["runs"][0]
    assert {k: run[k] for k in ("label", "reused", "computed")} == dict(label="m", reused=23, computed=17)
    assert run["backend"] == "transformers" and run["questions_per_s"] > 0  # which backend ran, how fast
    rows = read_predictions(preds)
    assert len(rows) == 40 and len({r["item_id"] for r in rows}) == 40

    # Same model, prompts and items: nothing to do (the model is not even loaded).
    m2 = evaluate(cfg, console=QUIET, load=lambda *a, **k: pytest.fail("model loaded although all was done"))
    assert m2["models"][0]["overall"] == m["models"][0]["overall"]

    # Another language changes every prompt; other weights change the model: all asked again.
    en = FakeBackend(guesser)
    evaluate(eval_settings(**{**cfg.__dict__, "lang": "en"}), console=QUIET, load=loader({"m": en}))
    assert len(en.asked) == 40
    # A different tile budget changes what the model sees: asked again, and the backend gets it.
    seen = {}
    tiles = FakeBackend(guesser)
    evaluate(eval_settings(**{**cfg.__dict__, "max_tiles": 2, "replicas_per_gpu": 3}), console=QUIET,
             load=lambda model_dir, **kw: seen.update(kw) or tiles)
    assert len(tiles.asked) == 40 and seen["max_tiles"] == 2
    assert seen["devices"] == "all" and seen["per_gpu"] == 3  # every GPU, --replicas-per-gpu backends on each
    (model / "model.safetensors").write_bytes(b"other weights")
    changed = FakeBackend(guesser)
    evaluate(cfg, console=QUIET, load=loader({"m": changed}))
    assert len(changed.asked) == 40


def test_answers_without_a_letter_count_a_quarter(small_foodieqa_dir, tmp_path):
    """The headline is the authors' protocol: a letterless answer is worth 1/4 (their random guess);
    strict counts it wrong; the seeded guess makes it right about a quarter of the time."""
    fake = FakeBackend(lambda t, i: "这个我不确定" if int(Path(i[0]).stem) % 2 else "（A）")
    out = tmp_path / "out"
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir),
                            out=str(out), tasks=("sivqa",)), console=QUIET, load=loader({"m": fake}))
    rows = read_predictions(out / "predictions" / "m.jsonl")
    t = m["models"][0]["tasks"]["sivqa"]
    letterless = [r for r in rows if r["letter"] is None]
    right = sum(r["answer"] == "A" for r in rows if r["letter"] == "A")
    assert t["no_letter"] == len(letterless) > 0 and all(r["score"] == 0.25 for r in letterless)
    assert t["accuracy"] == pytest.approx((right + 0.25 * len(letterless)) / len(rows))
    assert t["strict"]["accuracy"] == pytest.approx(right / len(rows))
    assert t["strict"]["accuracy"] < t["accuracy"]
    guessed = sum(r["guess"] == r["answer"] for r in letterless)
    assert t["seeded_guess"]["correct"] == right + guessed
    assert all(r["guess"] in LETTERS for r in letterless) and all(r["guess"] is None for r in rows if r["letter"])
    report = (out / "report.md").read_text()
    assert "这个我不确定" in report and "## Responses without a letter" in report


def test_saved_predictions_rescore_to_the_reported_numbers(small_foodieqa_dir, tmp_path):
    """An independent scorer that knows only the authors' rule and the predictions file (raw response +
    gold letter per question) gets every reported accuracy."""
    import re

    styles = ["Based on the image: C", "c", "（Ｄ）", "答案是麻婆豆腐。", "D) 川菜", "A, not B", ""]
    fake = FakeBackend(lambda t, i: styles[hashlib.sha256((t + str(i)).encode()).digest()[0] % len(styles)])
    out = tmp_path / "out"
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir),
                            out=str(out)), console=QUIET, load=loader({"m": fake}))

    def rescore(path):
        per_task = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            found = re.findall(r"[A-D]", row["response"])
            value = 0.25 if not found else float(found[0] == row["answer"])
            per_task.setdefault(row["task"], []).append(value)
        return {task: sum(v) / len(v) for task, v in per_task.items()}

    saved = json.loads((out / "metrics.json").read_text())
    reported = {task: t["accuracy"] for task, t in saved["models"][0]["tasks"].items()}
    assert rescore(out / "predictions" / "m.jsonl") == pytest.approx(reported)
    assert set(reported) == {"sivqa", "mivqa"}
    rows = read_predictions(out / "predictions" / "m.jsonl")
    assert {"response", "answer", "task", "question_id", "template", "prompt", "images"} <= set(rows[0])


# ---------------------------------------------------------------------------------------------
# The embedded default: the untrained tiny model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_eval(tiny_model_dir, small_foodieqa_dir, tmp_path_factory):
    """One run of the command line on the untrained tiny model: English, the authors' template 1."""
    out = tmp_path_factory.mktemp("eval") / "out"
    run = subprocess.run([sys.executable, str(REPO / "tools" / "eval_food.py"), "--model", str(tiny_model_dir),
                          "--label", "tiny", "--data-root", str(small_foodieqa_dir), "--out", str(out),
                          "--tasks", "sivqa,mivqa", "--limit", "16", "--lang", "en", "--backend", "transformers",
                          "--template", "1", "--batch-size", "8", "--max-new-tokens", "16"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads((out / "metrics.json").read_text()), out, run.stderr


def test_untrained_tiny_model_is_at_chance(tiny_eval):
    """Random weights cannot know dishes: accuracy is not above what guessing gives.

    "Near chance", statistically: the one-sided exact binomial test of "better than 25%" is not
    significant (p > 0.01), on the seeded-guess outcomes and on the answers that have a letter.
    """
    metrics, out, _ = tiny_eval
    m = metrics["models"][0]
    rows = read_predictions(out / "predictions" / "tiny.jsonl")
    assert len(rows) == m["overall"]["n"] == 32
    assert all(r["response"] is not None and r["backend"] == "transformers" for r in rows)

    def p_above_chance(k, n):
        return sum(math.comb(n, i) * 0.25 ** i * 0.75 ** (n - i) for i in range(k, n + 1))

    assert p_above_chance(m["overall"]["seeded_guess"]["correct"], 32) > 0.01
    lettered = [r for r in rows if r["letter"] is not None]
    assert p_above_chance(sum(r["letter"] == r["answer"] for r in lettered), len(lettered)) > 0.01
    assert m["overall"]["no_letter"] == 32 - len(lettered)
    for task in ("sivqa", "mivqa"):
        t = m["tasks"][task]
        assert t["n"] == 16 and t["chance"]["range95"][0] <= 4 <= t["chance"]["range95"][1]


def test_report_and_chart_are_well_formed(tiny_eval, tiny_model_dir):
    from PIL import Image

    from foodie.model_spec import ModelSpec
    saved, out, _ = tiny_eval
    # no --max-tiles: the checkpoint's own tile budget, recorded
    assert saved["runs"][0]["max_tiles"] == ModelSpec.from_checkpoint(tiny_model_dir).max_tiles
    assert {"lang", "template", "protocol", "questions", "models", "comparisons", "published", "runs",
            "settings"} <= set(saved)
    assert saved["template"] == 1 == saved["settings"]["template"]
    assert saved["questions"] == {"data": "synthetic", "scope": "subset (first 16 per task, spread)"}
    m = saved["models"][0]
    assert {"overall", "tasks", "label", "fingerprint", "backend"} <= set(m)
    for t in m["tasks"].values():
        assert {"n", "accuracy", "ci95", "no_letter", "letter_right", "seeded_guess", "strict", "option_text",
                "by_question_type", "by_cuisine", "chance"} <= set(t)
        assert t["ci95"][0] <= t["accuracy"] <= t["ci95"][1]
        assert sum(g["n"] for g in t["by_cuisine"].values()) == t["n"] == sum(g["n"] for g in t["by_question_type"].values())
    assert len(m["tasks"]["sivqa"]["by_cuisine"]) > 1  # cuisines come from the data, not "unknown"

    report = (out / "report.md").read_text()
    table = [ln for ln in report.splitlines() if ln.startswith("| tiny |")]
    assert len(table) == 3  # sivqa, mivqa, all
    header = next(ln for ln in report.splitlines() if ln.startswith("| model | task | accuracy %"))
    assert all(ln.count("|") == header.count("|") for ln in table)
    for heading in ("## Accuracy", "## Accuracy by question type", "## Accuracy by cuisine",
                    "## Responses without a letter"):
        assert heading in report
    # Synthetic data: the paper's models are never set beside it, in the report or the chart.
    assert saved["published"]["results"] == {} and "GPT-4o" not in report
    assert "Not shown: these questions are synthetic data" in report and "first capital A-D anywhere" in report
    assert "![accuracy by model and task](accuracy.png)" in report

    with Image.open(out / "accuracy.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 600 and im.height > 300


def test_cli(tiny_eval, tiny_model_dir, small_foodieqa_dir, tmp_path, capsys):
    from foodie import cli
    from foodie.evaluation import main
    metrics, out, stderr = tiny_eval
    assert "FoodieQA accuracy (en, template 1" in stderr  # the rich table
    rows = read_predictions(out / "predictions" / "tiny.jsonl")
    assert [r["task"] for r in rows] == ["sivqa"] * 16 + ["mivqa"] * 16 and all(r["template"] == 1 for r in rows)
    assert all(r["prompt"].startswith("You are an AI assistant.") for r in rows if r["task"] == "sivqa")
    assert metrics["settings"]["template"] == 1
    assert (out / "report.md").is_file() and (out / "accuracy.png").is_file()

    for args, words in ((["--model", str(tmp_path / "nope")], ["nope", "config.json"]),
                        (["--model", str(tiny_model_dir), "--template", "5"], ["--template 5", "0-4"])):
        assert cli.run(main, [*args, "--data-root", str(small_foodieqa_dir), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and len(err.strip().splitlines()) == 1, err


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


def test_every_template_of_the_authors_is_selectable(small_foodieqa_dir):
    """Single-image zh 0-4 / en 0-3, multi-image zh and en 0-3: each builds every question, with one
    <image> per image, and the templates that start the reply carry that start separately."""
    from foodie.tasks import TASKS
    for lang in ("zh", "en"):
        for task in ("sivqa", "mivqa"):
            numbers = range(len(TASKS[task].templates[lang]))
            assert len(numbers) == {"sivqa": {"zh": 5, "en": 4}, "mivqa": {"zh": 4, "en": 4}}[task][lang]
            for n in numbers:
                qs, _ = build_questions(small_foodieqa_dir, (task,), lang, limit=2, template=n)
                for q in qs:
                    assert q.template == n
                    if task == "mivqa":
                        assert q.prompt.count("<image>") == 4 and len(q.images) == 4
                    assert q.reply_prefix == TASKS[task].templates[lang][n].reply_prefix
        with pytest.raises(ValueError, match="0-3"):
            build_questions(small_foodieqa_dir, ("mivqa",), lang, template=4)
    si, = build_questions(small_foodieqa_dir, ("sivqa",), "zh", limit=1, template=3)[0]
    assert si.prompt.endswith("请根据上图从所提供的选项中选择一个正确答案。") and si.reply_prefix == "我选择（"


def test_english_prompts_use_the_english_question_and_choices(small_foodieqa_dir):
    from foodie.foodieqa import load_foodieqa
    items = {it.question_id: it for it in load_foodieqa(small_foodieqa_dir, ("sivqa",)).sivqa}
    for template in range(4):
        for q in build_questions(small_foodieqa_dir, ("sivqa",), "en", limit=8, template=template)[0]:
            it = items[q.question_id]
            assert it.question_en.strip() in q.prompt and q.choices == it.choices_en
            assert all(f"（{x}) {c.strip()}\n" in q.prompt for x, c in zip(LETTERS, it.choices_en))
            assert not any(c in q.prompt for c in it.choices if c not in it.choices_en)
            assert "选项" not in q.prompt


def test_multi_image_questions_keep_the_images_in_the_files_order(small_foodieqa_dir, tmp_path):
    """Image k of the file is image k of the prompt (option A-D), whatever the template; the answer
    letter indexes that order; the model is handed the images in it."""
    raw = {str(r["question_id"]): r["images"] for r in json.loads((small_foodieqa_dir / "mivqa_tidy.json").read_text())}
    for template in range(4):
        qs, _ = build_questions(small_foodieqa_dir, ("mivqa",), "zh", template=template)
        assert all(q.images == raw[q.question_id] for q in qs)
    seen = []

    class Recorder(FakeBackend):
        def generate(self, requests, params):
            seen.extend((r[-1].text, [Path(p).relative_to(small_foodieqa_dir).as_posix() for p in r[-1].images])
                        for r in requests)
            return ["A"] * len(requests)

    evaluate(eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir),
                        out=str(tmp_path / "out"), tasks=("mivqa",), template=1), console=QUIET,
             load=loader({"m": Recorder(None)}))
    qs = build_questions(small_foodieqa_dir, ("mivqa",), "zh", template=1)[0]
    assert sorted(seen) == sorted((q.prompt, raw[q.question_id]) for q in qs)
    for text, _ in seen:
        assert text.index("<image>图A") < text.index("<image>图B") < text.index("<image>图C") < text.index("<image>图D")


def test_reply_prefix_reaches_the_model_as_the_start_of_its_turn(small_foodieqa_dir, tmp_path):
    asked = []

    class Recorder(FakeBackend):
        def generate(self, requests, params):
            asked.extend(requests)
            return ["B"] * len(requests)

    out = tmp_path / "out"
    evaluate(eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir), out=str(out),
                        tasks=("sivqa",), template=4, limit=3), console=QUIET, load=loader({"m": Recorder(None)}))
    assert [[m.role for m in r] for r in asked] == [["user", "assistant"]] * 3
    assert all(r[-1].text == "我选择（" for r in asked)
    rows = read_predictions(out / "predictions" / "m.jsonl")
    assert all(r["reply_prefix"] == "我选择（" and r["response"] == "B" for r in rows)

    # Multi-image zh template 3 starts the reply with "...选项ABCD中...": only what the model wrote is
    # scored, so its "B" reads as B, not as the A of the prefix.
    asked.clear()
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "n"))], data_root=str(small_foodieqa_dir),
                            out=str(out), tasks=("mivqa",), template=3), console=QUIET,
                 load=loader({"n": Recorder(None)}))
    assert "ABCD" in asked[0][-1].text and authors_letter(asked[0][-1].text) == 0
    rows = read_predictions(out / "predictions" / "n.jsonl")
    assert {r["letter"] for r in rows} == {"B"}
    assert m["models"][0]["tasks"]["mivqa"]["accuracy"] == pytest.approx(sum(r["answer"] == "B" for r in rows) / len(rows))


def test_published_rows_only_beside_real_foodieqa(small_foodieqa_dir, tmp_path):
    """The same questions without the synthetic marker stand for a real FoodieQA folder: the authors'
    rows appear, all of them, marks kept, labelled full test set; ours labelled with its own scope."""
    import shutil

    from PIL import Image

    from foodie.published import PUBLISHED
    real = tmp_path / "FoodieQA"
    shutil.copytree(small_foodieqa_dir, real)
    (real / ".synthetic.json").unlink()
    (real / "README.md").unlink()
    fake = FakeBackend(guesser)
    out = tmp_path / "out"
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(real), out=str(out)),
                 console=QUIET, load=loader({"m": fake}))
    assert m["questions"] == {"data": "FoodieQA", "scope": "full test set"}
    assert [r["model"] for r in m["published"]["results"]["sivqa"]] == \
        [r["model"] for r in sorted(PUBLISHED["sivqa"]["zh"], key=lambda r: -r["accuracy"])]
    assert len(m["published"]["results"]["sivqa"]) == 9 and len(m["published"]["results"]["mivqa"]) == 7
    report = (out / "report.md").read_text()
    assert "| GPT-4o | 72.66 | full test set, by the authors |" in report
    assert "| Human | 91.69 | full test set, by the authors |" in report
    assert "| **m** (ours) |" in report and "full test set, FoodieQA, n=96" in report
    with Image.open(out / "accuracy.png") as im:
        assert im.width > 1000  # the second panel

    en = evaluate(eval_settings(models=[str(fake_model(tmp_path, "e"))], data_root=str(real), out=str(tmp_path / "en"),
                             lang="en", tasks=("sivqa",), limit=5), console=QUIET, load=loader({"e": FakeBackend(guesser)}))
    assert {r["model"]: r["mark"] for r in en["published"]["results"]["sivqa"]}["Human"] == "†"
    report = (tmp_path / "en" / "report.md").read_text()
    assert "| Human | 46.53† | full test set, by the authors |" in report
    assert "subset" in report and "not the full test set" in report


def test_chart_value_labels_stay_below_the_title(small_foodieqa_dir, tmp_path):
    """A model at 100% puts its value label above the bar: it must stay inside the axes, under the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from foodie import report
    questions, _ = build_questions(small_foodieqa_dir, ("sivqa",), "zh")
    truth = {q.prompt: LETTERS[q.answer] for q in questions}
    out = tmp_path / "out"
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "o"))], data_root=str(small_foodieqa_dir), out=str(out),
                            tasks=("sivqa",)), console=QUIET, load=loader({"o": FakeBackend(lambda t, i: truth[t])}))
    assert m["models"][0]["tasks"]["sivqa"]["accuracy"] == 1.0
    saved = []
    save = Figure.savefig
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or save(fig, *a, **k))
        report.render_chart(m, tmp_path / "c.png")
    fig = saved[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    title = ax.title.get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert box.y1 <= ax.get_window_extent(renderer).y1 and not box.overlaps(title), text.get_text()


def test_textqa_is_evaluated_with_the_authors_text_templates(tmp_path):
    """The synthetic set has a TextQA file in the official schema; with no --tasks every task the folder
    has is asked, TextQA included, as text only."""
    from foodie.tasks import TASKS
    from foodie.synthetic_data import make_demo_data

    data = tmp_path / "foodieqa"
    make_demo_data(data, seed=0, num_dishes=4, photos_per_dish=1, questions_per_photo=1, mivqa_per_dish=1)
    raw = json.loads((data / "textqa_tidy.json").read_text())
    assert {"question_id", "question", "choices", "answer", "question_en", "choices_en"} <= set(raw[0])
    for lang in ("zh", "en"):
        for n in range(len(TASKS["textqa"].templates[lang])):
            qs = build_questions(data, ("textqa",), lang, template=n)[0]
            assert len(qs) == len(raw) and all(not q.images and "<image>" not in q.prompt for q in qs)
            assert qs[0].reply_prefix == TASKS["textqa"].templates[lang][n].reply_prefix
    zh = build_questions(data, ("textqa",), "zh")[0][0]
    assert zh.prompt.endswith("请根据从所提供的选项中选择一个正确答案，为（") and "选项有: （A) " in zh.prompt

    questions = build_questions(data, None, "zh")[0]
    truth = {(q.prompt, str([Path(p).name for p in q.images])): LETTERS[q.answer] for q in questions}
    oracle = FakeBackend(lambda t, i: truth[t, str(i)])
    m = evaluate(eval_settings(models=[str(fake_model(tmp_path, "o"))], data_root=str(data), out=str(tmp_path / "out")),
                 console=QUIET, load=loader({"o": oracle}))
    assert list(m["models"][0]["tasks"]) == ["sivqa", "mivqa", "textqa"]
    assert m["models"][0]["tasks"]["textqa"]["accuracy"] == 1.0 and m["settings"]["tasks"] == ["sivqa", "mivqa", "textqa"]
    assert "| o | text-only QA | 100.0 |" in (tmp_path / "out" / "report.md").read_text()


def test_a_template_that_starts_the_reply_is_refused_on_lmdeploy_before_loading(small_foodieqa_dir, tmp_path,
                                                                                monkeypatch):
    from foodie import inference
    monkeypatch.setattr(inference, "resolve_backend", lambda backend="auto": "lmdeploy")
    cfg = eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir), out=str(tmp_path / "o"),
                     tasks=("sivqa",), template=3)
    with pytest.raises(ValueError, match="--template 3 .*--backend transformers"):
        evaluate(cfg, console=QUIET, load=lambda *a, **k: pytest.fail("model loaded"))


def test_report_says_when_answers_were_cut_below_the_authors_length(small_foodieqa_dir, tmp_path):
    out = tmp_path / "out"
    evaluate(eval_settings(models=[str(fake_model(tmp_path, "m"))], data_root=str(small_foodieqa_dir), out=str(out),
                        tasks=("sivqa",), limit=4, max_new_tokens=64), console=QUIET, load=loader({"m": FakeBackend(guesser)}))
    assert "answers up to 64 new tokens, greedy (**below the authors' 500**" in (out / "report.md").read_text()
    evaluate(eval_settings(models=[str(fake_model(tmp_path, "n"))], data_root=str(small_foodieqa_dir), out=str(out),
                        tasks=("sivqa",), limit=4), console=QUIET, load=loader({"n": FakeBackend(guesser)}))
    report = (out / "report.md").read_text()
    assert "answers up to 512 new tokens, greedy;" in report and "below the authors'" not in report
