"""`make quickstart`'s pipeline end to end on the embedded default, then a re-run that skips every stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _quickstart(work: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FOODIE_WORK=str(work), COLUMNS="120")
    return subprocess.run([sys.executable, "tools/quickstart.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)


@pytest.mark.slow
def test_quickstart_runs_the_course_and_skips_finished_stages_on_rerun(tmp_path):
    work = tmp_path / "work"
    t0 = time.time()
    first = _quickstart(work)
    took = time.time() - t0
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((work / "quickstart-result.json").read_text())
    metrics = json.loads((Path(result["chart"]).parent / "metrics.json").read_text())
    overall = {m["label"]: m["overall"] for m in metrics["models"]}
    print(f"quickstart: {took:.0f} s; held-out accuracy {result['before']:.2f} -> {result['after']:.2f}")

    # Accuracy by the FoodieQA authors' rule (first capital A-D; no letter counts 1/4). Before: the base model
    # knows no dish, no better than the 40% bar. After: every answer carries the letter the default style trains.
    assert result["before"] <= 0.40
    assert overall["tuned"]["no_letter"] == 0
    assert overall["base"]["n"] == overall["tuned"]["n"] >= 200
    # The merged checkpoint is a standard folder, the chart a real PNG, the demo command names both models.
    assert (Path(result["merged"]) / "config.json").is_file()
    assert Image.open(result["chart"]).size[0] > 100
    assert f"--model {result['merged']}" in result["demo"] and "--compare" in result["demo"]
    assert "[7/7]" in first.stdout and "before vs after" in first.stdout

    # Re-running does nothing that is already done and correct.
    t0 = time.time()
    again = _quickstart(work)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already done, inputs unchanged") == 5
    for tool in ("process_food.py", "eval_food.py", "tools/train.py", "convert_to_official.py"):
        assert tool not in again.stdout, f"{tool} ran again"
    assert time.time() - t0 < 120

    # Training taught the held-out dishes: at least 90% by the authors' rule (issue 17's bar; 95% measured on
    # 2 CPU cores, docs/TRAINING.md "What the embedded tiny model learns").
    assert result["after"] >= 0.90, f"tuned held-out accuracy by the authors' rule {result['after']:.2f} < 0.90"


def test_quickstart_stops_with_the_cause_when_the_model_is_missing(tmp_path):
    env = dict(os.environ, FOODIE_WORK=str(tmp_path / "work"))
    done = subprocess.run([sys.executable, "tools/quickstart.py", "--model", str(tmp_path / "nope"),
                           "--data-root", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert "no config.json" in done.stderr and "MODEL=" in done.stderr


def _pipeline(tmp_path, monkeypatch):
    import argparse
    import importlib.util

    for key in ("FOODIE_MODEL", "FOODIE_DATA", "FOODIE_WORK_DIR", "PYTHONUNBUFFERED"):
        monkeypatch.delenv(key, raising=False)  # the pipeline sets them; monkeypatch restores them
    monkeypatch.setenv("FOODIE_WORK", str(tmp_path / "work"))
    spec = importlib.util.spec_from_file_location("quickstart_tool", REPO / "tools" / "quickstart.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = argparse.Namespace(model=None, data_root=None, config=None, lang="zh", tasks="sivqa", deepspeed=None)
    pipeline = tool.Pipeline(args)
    commands = []
    pipeline.run = lambda stage, cmd: commands.append(cmd)
    return tool, pipeline, commands


def test_training_resumes_only_a_run_of_the_same_inputs(tmp_path, monkeypatch):
    """An interrupted run of these inputs is continued; checkpoints of other inputs (the config, data or
    model changed since) are moved aside, never resumed into the new run."""
    tool, pipeline, commands = _pipeline(tmp_path, monkeypatch)
    train_dir = pipeline.train_dir
    train_dir.mkdir(parents=True)
    (train_dir / "iter_100.pth").write_bytes(b"checkpoint of the same inputs")
    (train_dir / tool.TRAIN_INPUTS_FILE).write_text("key-a\n")
    pipeline.train("key-a")
    assert "--resume" in commands[-1]

    pipeline.train("key-b")  # the inputs changed
    assert "--resume" not in commands[-1]
    stale = train_dir.with_name(train_dir.name + ".stale")
    assert (stale / "iter_100.pth").read_bytes() == b"checkpoint of the same inputs"
    assert not (train_dir / "iter_100.pth").exists()
    assert (train_dir / tool.TRAIN_INPUTS_FILE).read_text().strip() == "key-b"


def test_training_source_and_evaluation_source_stay_apart(tmp_path, monkeypatch, small_foodieqa_dir):
    """make quickstart TRAIN_DATA=photos DATA=...: the data step converts the training source (a photo folder
    goes through tools/photos_to_foodieqa.py first), evaluation asks every question of DATA, never trained on,
    and the summary says which is which. Without TRAIN_DATA the held-out split of DATA is evaluated."""
    import argparse
    import importlib.util

    for key in ("FOODIE_MODEL", "FOODIE_DATA", "FOODIE_WORK_DIR", "PYTHONUNBUFFERED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FOODIE_WORK", str(tmp_path / "work"))
    spec = importlib.util.spec_from_file_location("quickstart_tool", REPO / "tools" / "quickstart.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = tmp_path / "InternVL2-2B"
    model.mkdir()
    (model / "config.json").write_text("{}")
    photos = tmp_path / "my-photos"
    for dish in ("麻婆豆腐", "白切鸡", "东坡肉", "羊肉串"):
        (photos / dish).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(photos / dish / "1.jpg")

    def pipeline(train_data):
        args = argparse.Namespace(model=str(model), data_root=str(small_foodieqa_dir), train_data=train_data,
                                  accept_foodieqa_terms=False, config=None, lang="zh", tasks="sivqa", deepspeed=None)
        p = tool.Pipeline(args)
        p.commands = []
        p.run = lambda stage, cmd: p.commands.append(cmd)
        p.prepare_inputs()
        p.convert_data()
        return p, p.eval_cmd([("base", model)])

    p, evaluate = pipeline(str(photos))
    photo_tool, process_food = p.commands
    assert photo_tool[1:4] == ["tools/photos_to_foodieqa.py", str(photos), "--out"]
    trained_on = Path(photo_tool[4])
    assert process_food[process_food.index("--data-root") + 1] == str(trained_on)
    assert "--accept-foodieqa-terms" not in process_food
    assert evaluate[evaluate.index("--data-root") + 1] == str(small_foodieqa_dir) and "--items" not in evaluate
    line = p.sources_line()
    assert str(trained_on) in line and "every question of synthetic FoodieQA" in line and str(small_foodieqa_dir) in line

    trained_on.mkdir(parents=True)  # as the photo tool leaves it: a re-run with the same photos converts nothing
    again, _ = pipeline(str(photos))
    assert [c[1] for c in again.commands] == ["tools/process_food.py"]

    p, evaluate = pipeline(None)
    assert p.commands[0][p.commands[0].index("--data-root") + 1] == str(small_foodieqa_dir)
    assert evaluate[evaluate.index("--items") + 1] == str(p.xtuner_data / "held_out.json")
    assert "held-out split" in p.sources_line()


def test_evaluations_get_the_answer_cap_chosen_for_the_device(tmp_path, monkeypatch):
    """On CPU the quickstart caps answers at 64 new tokens (a model that never ends its turn would spend minutes
    on the authors' 512); the cap reaches eval_food and is part of the base evaluation's stage key."""
    tool, pipeline, _ = _pipeline(tmp_path, monkeypatch)
    assert "--max-new-tokens" not in pipeline.eval_cmd([("base", pipeline.model)])  # not given: eval_food's 512
    pipeline.max_new_tokens = 64
    cmd = pipeline.eval_cmd([("base", pipeline.model)])
    assert cmd[cmd.index("--max-new-tokens") + 1] == "64"
    seen = {}
    monkeypatch.setattr(tool, "Pipeline", lambda args: seen.setdefault("args", args) and pytest.fail("stop"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(BaseException):
        tool.main([])
    assert seen["args"].max_new_tokens == 64 and seen["args"].deepspeed == ""
