"""FoodieQA's terms where they matter: the data step refuses to write training data from the real FoodieQA
without the acknowledgement (evaluation needs none), unpacks the download (FoodieQA.zip) safely, and the data's
provenance travels from process_food through the training work dir to the merged model."""
from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from foodie import terms
from foodie.foodieqa import ZIP_NAME, DownloadError, locate_data_root, unpack_zip


@pytest.fixture
def process_food(run_tool):
    """``python tools/process_food.py ARGS``, run in this process."""
    return functools.partial(run_tool, "tools/process_food.py")


@pytest.fixture(scope="module")
def real_like(tmp_path_factory, small_foodieqa_dir) -> Path:
    """A folder in the FoodieQA schema without either marker: what the real FoodieQA looks like to the tools."""
    root = tmp_path_factory.mktemp("real") / "FoodieQA"
    root.mkdir()
    shutil.copytree(small_foodieqa_dir / "images", root / "images")
    for name in ("sivqa_tidy.json", "mivqa_tidy.json"):
        shutil.copyfile(small_foodieqa_dir / name, root / name)
    assert terms.dataset_kind(root) == terms.FOODIEQA
    return root


def test_real_foodieqa_training_data_needs_the_terms_flag_evaluation_does_not(real_like, tmp_path, process_food):
    refused = process_food("--data-root", real_like, "--out", tmp_path / "train")
    assert refused.returncode == 2
    assert "仅限评测" in refused.stdout and "evaluation only" in refused.stdout  # the terms, in both languages
    assert "CC BY-NC-ND 4.0" in refused.stdout
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error:") and "evaluation only" in error and "authors' permission" in error
    assert terms.ACCEPT_FLAG in error and "--eval-only" in error and "Traceback" not in refused.stderr
    assert not (tmp_path / "train").exists()

    evaluation = process_food("--data-root", real_like, "--out", tmp_path / "eval", "--eval-only")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "evaluation only" in evaluation.stdout  # the terms are shown here too
    assert not (tmp_path / "eval" / "train.json").exists()
    held_out = json.loads((tmp_path / "eval" / "held_out.json").read_text(encoding="utf-8"))
    asked = json.loads((real_like / "sivqa_tidy.json").read_text(encoding="utf-8"))
    assert len(held_out["question_ids"]["sivqa"]) == len(asked)  # every question is for evaluation

    accepted = process_food("--data-root", real_like, "--out", tmp_path / "train", terms.ACCEPT_FLAG)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads((tmp_path / "train" / "train.json").read_text(encoding="utf-8"))
    source = json.loads((tmp_path / "train" / "summary.json").read_text(encoding="utf-8"))["source"]
    assert source["kind"] == "foodieqa" and source["name"] == terms.FOODIEQA_ID
    assert source["terms_accepted"] is True and source["licence"] == "CC BY-NC-ND 4.0"
    assert any("evaluation only" in t for t in source["terms"])
    assert "evaluation only" in (tmp_path / "train" / "summary.md").read_text(encoding="utf-8")


def test_synthetic_set_needs_no_flag_and_says_what_it_is(small_foodieqa_dir, tmp_path, process_food):
    done = process_food("--data-root", small_foodieqa_dir, "--out", tmp_path / "out", "--no-image-check")
    assert done.returncode == 0, done.stderr
    assert "仅限评测" not in done.stdout
    source = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["source"]
    assert source["kind"] == "synthetic" and source["synthetic"] is True


# --------------------------------------------------------------------------- the download: FoodieQA.zip

def zip_folder(root: Path, archive: Path, prefix: str = "FoodieQA/") -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(root).as_posix())


def test_download_folder_with_the_zip_is_unpacked_and_used(real_like, tmp_path, process_food):
    download = tmp_path / "download"
    download.mkdir()
    (download / "README.md").write_text("dataset card")
    zip_folder(real_like, download / ZIP_NAME)
    with pytest.raises(DownloadError, match=r"not yet unpacked: run python tools/process_food.py --data-root"):
        locate_data_root(download)  # tools that do not unpack say in one line what to run

    done = process_food("--data-root", download, "--out", tmp_path / "eval", "--eval-only")
    assert done.returncode == 0, done.stderr
    assert (download / "FoodieQA" / "sivqa_tidy.json").is_file()
    assert not [p for p in download.iterdir() if p.name.startswith(".")]  # no temporary folder left
    manifest = json.loads((tmp_path / "eval" / "held_out.json").read_text(encoding="utf-8"))
    assert manifest["data_root"] == str((download / "FoodieQA").resolve())
    assert locate_data_root(download) == download / "FoodieQA"  # found again without unpacking


def _evil_zip(path: Path, how: str) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("FoodieQA/sivqa_tidy.json", "[]")
        if how == "parent":
            zf.writestr("FoodieQA/../../escaped.txt", "x")
        elif how == "absolute":
            zf.writestr("/tmp/escaped.txt", "x")
        elif how == "symlink":
            info = zipfile.ZipInfo("FoodieQA/images")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc")
        elif how == "duplicate":  # a second member of one name would replace the first without a word
            with pytest.warns(UserWarning, match="Duplicate name"):
                zf.writestr("FoodieQA/sivqa_tidy.json", "[{}]")


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "duplicate"])
def test_unsafe_zip_members_are_refused_and_nothing_is_unpacked(tmp_path, how, process_food):
    download = tmp_path / "download"
    download.mkdir()
    _evil_zip(download / ZIP_NAME, how)
    with pytest.raises(DownloadError, match="refusing") as e:
        unpack_zip(download / ZIP_NAME, download)
    assert str(download / ZIP_NAME) in str(e.value)
    assert sorted(p.name for p in download.iterdir()) == [ZIP_NAME]
    assert not (tmp_path / "escaped.txt").exists()
    done = process_food("--data-root", download, "--out", tmp_path / "out", "--eval-only")
    assert done.returncode == 2 and "refusing" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- provenance: data -> work dir -> merge

def test_training_work_dir_keeps_the_data_source_the_merge_reports(real_like, tmp_path, process_food):
    from foodie.merge import describe_data
    from foodie.training import record_data_source

    data = tmp_path / "xtuner"
    assert process_food("--data-root", real_like, "--out", data, terms.ACCEPT_FLAG, "--no-image-check").returncode == 0
    work = tmp_path / "run"
    work.mkdir()
    record_data_source(data / "train.json", work)  # what tools/train.py does when training starts
    run = SimpleNamespace(data_path=str(data / "train.json"), work_dir=work)
    described = describe_data(run)
    assert described["kind"] == "foodieqa" and described["terms_accepted"] is True
    assert described["source"] == str(real_like.resolve()) and described["train_questions"] > 0

    # The data folder is rebuilt from other data after training: the merge still names what was trained on.
    summary = json.loads((data / "summary.json").read_text(encoding="utf-8"))
    summary["source"] = {"kind": "synthetic", "name": "other", "synthetic": True, "root": "/elsewhere",
                         "licence": "none"}
    (data / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert describe_data(run)["kind"] == "foodieqa"
    os.remove(work / terms.DATA_SOURCE_FILE)
    assert describe_data(run)["kind"] == "synthetic"  # without the copy: the summary beside the data


def test_evaluation_reads_the_unpacked_download_and_names_a_packed_one(real_like, tmp_path):
    from foodie.foodieqa import FoodieQAError, load_foodieqa

    download = tmp_path / "download"
    download.mkdir()
    zip_folder(real_like, download / ZIP_NAME)
    with pytest.raises(FoodieQAError, match=r"FoodieQA.zip, not yet unpacked: run python tools/process_food.py"):
        load_foodieqa(download, check_images=False)
    unpack_zip(download / ZIP_NAME, download)
    data = load_foodieqa(download, check_images=False)  # eval_food / the demo pointed at the download folder
    assert data.root == (download / "FoodieQA").resolve() and data.sivqa


def test_evaluation_report_says_which_data_trained_each_model(tmp_path):
    from foodie.report import training_data_lines as _training_data_lines

    photos, foodieqa = tmp_path / "my-photos-dataset", tmp_path / "FoodieQA"
    tuned = {"label": "tuned", "trained_on": {"name": "own photos (tools/photos_to_foodieqa.py)", "source": str(photos)}}
    base = {"label": "base", "trained_on": None}
    apart = _training_data_lines({"models": [base, tuned], "data_root": str(foodieqa), "items_manifest": None})
    assert f"tuned: own photos (tools/photos_to_foodieqa.py) (`{photos}`)" in apart[1]
    assert "not the training data of any model" in apart[2]
    mixed = _training_data_lines({"models": [base, tuned], "data_root": str(photos), "items_manifest": None})
    assert "include training data of tuned" in mixed[2]
    assert len(_training_data_lines({"models": [base, tuned], "data_root": str(photos), "items_manifest": "h.json"})) == 2
    assert _training_data_lines({"models": [base], "data_root": str(photos), "items_manifest": None}) == []
