"""tools/photos_to_foodieqa.py: your own dish photos -> a data set in the FoodieQA schema; bad folders refused
with the file named; and the whole way a user takes it: photos -> process_food -> training -> merge ->
evaluation on another data set -> publish (without FoodieQA's terms)."""
from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from foodie.foodieqa import load_foodieqa
from foodie.own_photos import MANIFEST_FILE, PhotosError, build_dataset
from foodie.synthetic_data import DISHES
from foodie.terms import dataset_kind

REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py"
BY_KEY = {d.key: d for d in DISHES}
HEADER = ["folder", "dish", "dish_en", "cuisine", "cuisine_en", "region", "region_en"]


def photo_folder_from(synthetic: Path, dest: Path, *, csv_rows: bool = True, dishes: int | None = None) -> Path:
    """One subfolder of photos per dish (named in Chinese) from a synthetic FoodieQA's drawings, + dishes.csv."""
    rows = []
    for folder in sorted((synthetic / "images").iterdir())[:dishes]:
        dish = BY_KEY[folder.name]
        shutil.copytree(folder, dest / dish.zh)
        rows.append([dish.zh, dish.zh, dish.en, dish.cuisine.zh, dish.cuisine.en, dish.cuisine.region_zh,
                     dish.cuisine.region_en])
    if csv_rows:
        with open(dest / "dishes.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([HEADER, *rows])
    return dest


@pytest.fixture
def tool(run_tool):
    """``python tools/photos_to_foodieqa.py ARGS``, run in this process."""
    return functools.partial(run_tool, "tools/photos_to_foodieqa.py")


def test_photos_become_foodieqa_questions_with_a_manifest_of_sources(small_foodieqa_dir, tmp_path, tool):
    photos = photo_folder_from(small_foodieqa_dir, tmp_path / "photos")
    done = tool(photos, "--out", tmp_path / "ds")
    assert done.returncode == 0, done.stderr
    ds = tmp_path / "ds"
    assert dataset_kind(ds) == "own-photos"
    data = load_foodieqa(ds)  # the project's own schema reader accepts it, every image decodes
    photo_count = sum(1 for p in photos.rglob("*.jpg"))
    assert len(data.image_paths()) == photo_count == 16 * 6
    assert len(data.sivqa) == 2 * photo_count and len(data.mivqa) == 16 * 5

    for item in data.sivqa:  # the answer is the photo's own dish's value; the three others differ from it
        dish = next(d for d in DISHES if d.zh == item.food_name)
        truth = {"dish": dish.zh, "cuisine_type": dish.cuisine.zh, "region": dish.cuisine.region_zh}[item.question_type]
        assert item.choices[item.answer] == truth and len(set(item.choices)) == 4
        assert item.raw["choices_en"][item.answer] in (dish.en, dish.cuisine.en, dish.cuisine.region_en)
    assert {it.question_type for it in data.sivqa} == {"dish", "cuisine_type", "region"}  # what the CSV gives
    for item in data.mivqa:  # four photos of four dishes, the answer's is the dish asked about
        assert len({p.split("/")[1] for p in item.images}) == 4
        assert item.raw["food_names"][item.answer] == item.food_name

    manifest = json.loads((ds / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["source"] == str(photos.resolve()) and manifest["languages"] == ["en", "zh"]
    for record in manifest["photos"]:  # every photo: where it came from, byte for byte
        assert (ds / record["file"]).read_bytes() == (photos / record["source"]).read_bytes()
    assert len(manifest["dishes"]) == 16


def test_too_few_dishes_for_any_question_is_refused(small_foodieqa_dir, tmp_path):
    photos = photo_folder_from(small_foodieqa_dir, tmp_path / "photos", csv_rows=False, dishes=3)
    with pytest.raises(PhotosError, match="no 4-option question can be asked"):
        build_dataset(photos, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    photos4 = photo_folder_from(small_foodieqa_dir, tmp_path / "photos4", csv_rows=False, dishes=4)
    counts = build_dataset(photos4, tmp_path / "ds4", questions_per_photo=1)
    data = load_foodieqa(tmp_path / "ds4")
    assert counts["mivqa"] == 4 * 5 and {it.question_type for it in data.sivqa} == {"dish"}
    assert all(it.raw["choices_en"] == it.choices for it in data.sivqa)  # folder names serve both languages


def test_chinese_only_metadata_gives_chinese_only_questions(small_foodieqa_dir, tmp_path):
    photos = photo_folder_from(small_foodieqa_dir, tmp_path / "photos", csv_rows=False, dishes=4)
    with open(photos / "dishes.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["dish", "cuisine"], *[[p.name, "川菜"] for p in sorted(photos.iterdir())
                                                         if p.is_dir()]])
    build_dataset(photos, tmp_path / "ds")
    items = json.loads((tmp_path / "ds" / "sivqa_tidy.json").read_text(encoding="utf-8"))
    assert items and all("question_en" not in it and "choices_en" not in it for it in items)


# --------------------------------------------------------------------------- bad folders

def _good_photos(root: Path, dishes=("麻婆豆腐", "白切鸡", "东坡肉", "羊肉串")) -> Path:
    for k, name in enumerate(dishes):
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (64, 48), (40 * k, 30 * j, 90)).save(root / name / f"{j}.jpg")
    return root


def _break(photos: Path, how: str) -> str:
    """Damage the folder; return text the error must contain (the file it names)."""
    if how == "empty folder":
        shutil.rmtree(photos)
        photos.mkdir()
        return f"{photos}: empty"
    if how == "empty dish folder":
        (photos / "锅包肉").mkdir()
        return f"{photos / '锅包肉'}: no photos"
    if how == "0-byte photo":
        (photos / "白切鸡" / "2.jpg").write_bytes(b"")
        return f"{photos / '白切鸡' / '2.jpg'}: empty file (0 bytes)"
    if how == "unreadable photo":
        (photos / "白切鸡" / "2.jpg").write_bytes(b"not a jpeg at all")
        return f"{photos / '白切鸡' / '2.jpg'}: not a decodable image"
    if how == "duplicate photo":
        shutil.copyfile(photos / "白切鸡" / "0.jpg", photos / "东坡肉" / "9.jpg")
        return (f"{photos / '白切鸡' / '0.jpg'}: the same photo (same bytes) as {photos / '东坡肉' / '9.jpg'}, in two "
                f"dish folders")  # dish folders are read in name order, 东 before 白
    if how == "dish without metadata":
        with open(photos / "dishes.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["dish", "cuisine"], ["麻婆豆腐", "川菜"], ["白切鸡", "粤菜"], ["东坡肉", "浙菜"]])
        return f"{photos / 'dishes.csv'}: no row for the dish folder '羊肉串'"
    if how == "non-UTF-8 name":
        bad = os.fsencode(photos / "白切鸡") + b"/\xb0\xd7.jpg"  # GBK bytes of 白
        shutil.copyfile(photos / "白切鸡" / "0.jpg", bad)
        return "the name is not valid UTF-8"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["empty folder", "empty dish folder", "0-byte photo", "unreadable photo",
                                 "duplicate photo", "dish without metadata", "non-UTF-8 name"])
def test_bad_photo_folders_are_refused_naming_the_file_and_nothing_is_half_written(tmp_path, how, tool):
    photos = _good_photos(tmp_path / "photos")
    out = tmp_path / "ds"
    assert tool(photos, "--out", out).returncode == 0  # an earlier, good output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expected = _break(photos, how)
    done = tool(photos, "--out", out)
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stderr and all(line.startswith("error: ") for line in done.stderr.splitlines())
    assert expected in done.stderr
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier output is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_out_that_is_not_ours_is_kept(tmp_path, tool):
    photos = _good_photos(tmp_path / "photos")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    done = tool(photos, "--out", tmp_path / "mine")
    assert done.returncode == 2 and "--force" in done.stderr
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"
    inside = tool(photos, "--out", photos / "out")
    assert inside.returncode == 2 and "inside the photo folder" in inside.stderr


# --------------------------------------------------------------------------- train on yours, evaluate on another set

@pytest.mark.slow
def test_own_photos_train_merge_evaluate_on_foodieqa_and_publish_without_its_terms(tiny_model_dir,
                                                                                   small_foodieqa_dir, tmp_path):
    """The photos are drawings of another seed than the evaluation set (small_foodieqa_dir, standing in for
    FoodieQA): the model is evaluated on photos it never saw, and the publisher needs no FoodieQA flag."""
    from foodie.synthetic_data import make_demo_data

    drawings = tmp_path / "drawings"
    make_demo_data(drawings, seed=1, photos_per_dish=3, questions_per_photo=1, mivqa_per_dish=1, textqa=False)
    for path in (drawings / "images").rglob("*.jpg"):
        with Image.open(path) as im:
            small = im.convert("RGB").resize((160, 160), Image.Resampling.BICUBIC)
        small.save(path, quality=90)
    photos = photo_folder_from(drawings, tmp_path / "photos")
    env = dict(os.environ, OMP_NUM_THREADS="1", FOODIE_MODEL=str(tiny_model_dir),
               FOODIE_DATA=str(tmp_path / "xtuner"), FOODIE_WORK_DIR=str(tmp_path / "run"))

    def step(*cmd):
        done = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{cmd[0]}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    step("tools/photos_to_foodieqa.py", photos, "--out", tmp_path / "ds")
    step("tools/process_food.py", "--data-root", tmp_path / "ds", "--out", tmp_path / "xtuner")  # no terms flag
    step("tools/train.py", "--config", CPU_CONFIG, "--", "--cfg-options", "train_cfg.max_iters=6",
         "param_scheduler.1.end=6", "default_hooks.checkpoint.interval=6")
    # float32: after 6 steps the bf16 rounding of the tiny random model exceeds the merge's bf16 tolerance
    step("tools/convert_to_official.py", CPU_CONFIG, "latest", tmp_path / "merged", "--work-dir", tmp_path / "run",
         "--base-model", tiny_model_dir, "--dtype", "float32")
    step("tools/eval_food.py", "--model", tmp_path / "merged", "--label", "tuned", "--data-root", small_foodieqa_dir,
         "--tasks", "sivqa", "--limit", "8", "--max-new-tokens", "16", "--out", tmp_path / "eval")  # 6 steps: no turn end
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["models"][0]["overall"]["n"] == 8
    assert metrics["data_root"] == str(small_foodieqa_dir.resolve())
    report = (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")  # says which data is which
    assert f"Training data: tuned: own photos (tools/photos_to_foodieqa.py) (`{(tmp_path / 'ds').resolve()}`)" in report
    assert "The evaluated data is not the training data of any model here." in report

    provenance = json.loads((tmp_path / "merged" / "foodie_provenance.json").read_text(encoding="utf-8"))
    assert provenance["data"]["kind"] == "own-photos" and provenance["data"]["photos"] == 16 * 3
    assert provenance["data"]["photos_from"] == str(photos.resolve())
    published = step("tools/publish.py", "--model", tmp_path / "merged", "--repo-id", "me/InternVL2-tiny-MyDishes",
                     "--hub", "hf", "--dry-run")
    card = (tmp_path / "merged" / "README.md").read_text(encoding="utf-8")
    assert "own dish photos" in card and "license: mit" in card and "lyan62/FoodieQA" not in card
    assert "Dry run" in published.stdout
