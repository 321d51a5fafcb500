"""The synthetic FoodieQA is the data every test, demo and quickstart uses: it must have the real schema,
enough variety, learnable dishes, and be reproducible byte for byte."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foodie import synthetic_data as sd
from foodie.foodieqa import load_foodieqa

REPO = Path(__file__).resolve().parent.parent


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "foodie"
    start = time.perf_counter()
    counts = sd.make_demo_data(out, seed=0)
    return out, counts, time.perf_counter() - start


def test_default_build_is_fast_and_big_enough(demo):
    out, counts, seconds = demo
    assert seconds < 30, f"generation took {seconds:.1f} s (budget 30 s on one core)"
    assert counts["dishes"] >= 12 and counts["cuisines"] >= 6
    assert counts["images"] >= 20 * counts["dishes"]
    assert sorted(p.name for p in out.iterdir()) == [".synthetic.json", "README.md", "images", "mivqa_tidy.json",
                                                     "sivqa_tidy.json", "textqa_tidy.json"]
    size_mb = sum(p.stat().st_size for p in out.rglob("*")) / 1e6
    assert size_mb < 60, f"{size_mb:.0f} MB is too big for a demo data set"  # 1,920 photos of ~21 KB: 40 MB


def test_schema_through_foodieqa_reader(demo):
    out, counts, _ = demo
    data = load_foodieqa(out, tasks=["sivqa", "mivqa", "textqa"])  # validates everything, decodes every image
    assert (len(data.sivqa), len(data.mivqa), len(data.textqa)) == (counts["sivqa"], counts["mivqa"], counts["textqa"])
    raw = data.sivqa[0].raw
    for key in ("question_id", "question", "choices", "answer", "question_en", "choices_en", "food_name",
                "question_type", "food_meta"):
        assert key in raw
    assert isinstance(raw["answer"], str)
    for key in ("food_file", "food_name", "cuisine", "food_type", "region"):
        assert key in raw["food_meta"]
    for item in data.sivqa:
        assert item.image.startswith("images/") and item.image == item.food_meta["food_file"]
        assert item.choices_en and item.question_en
        assert len(set(item.choices)) == 4 and len(set(item.choices_en)) == 4
        assert item.cuisine in {c.zh for c in sd.CUISINES}
    assert {i.cuisine for i in data.mivqa} <= {c.zh for c in sd.CUISINES}
    # every image: JPEG, sides within PHOTO_SIDES, aspect between 1:2 and 2:1
    for rel, (w, h) in data.image_sizes.items():
        lo, hi = sd.PHOTO_SIDES
        assert lo <= w <= hi and lo <= h <= hi and 0.5 <= w / h <= 2.0, (rel, w, h)
    assert {Image.open(out / rel).format for rel in list(data.image_sizes)[:20]} == {"JPEG"}
    assert len({(w, h) for w, h in data.image_sizes.values()}) > 100  # varied sizes


def test_answers_spread_and_question_types_varied(demo):
    data = load_foodieqa(demo[0], check_images=False)
    for items in (data.sivqa, data.mivqa, data.textqa):
        counts = Counter(i.answer for i in items)
        assert set(counts) == {0, 1, 2, 3}
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert len({i.question_type for i in data.sivqa}) >= 4
    assert len({i.question_type for i in data.mivqa}) >= 2


def test_each_photo_is_asked_about_twice_with_different_question_types(demo):
    """A model must read the question, not only recognise the photo: every photo gets two single-image
    questions (the default), of two different types, and every type is asked about every dish."""
    data = load_foodieqa(demo[0], check_images=False)
    per_photo = defaultdict(list)
    for item in data.sivqa:
        per_photo[item.image].append(item.question_type)
    assert len(per_photo) == demo[1]["images"]
    assert {len(types) for types in per_photo.values()} == {2}
    assert all(len(set(types)) == 2 for types in per_photo.values())
    by_dish = defaultdict(set)
    for item in data.sivqa:
        by_dish[item.food_name].add(item.question_type)
    assert all(types == set(sd.QUESTION_TYPES) for types in by_dish.values()), by_dish


def test_questions_per_photo_is_checked(tmp_path):
    with pytest.raises(ValueError, match="questions_per_photo must be 1..5"):
        sd.make_demo_data(tmp_path / "x", photos_per_dish=1, num_dishes=4, questions_per_photo=6)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_answers_are_right(demo):
    """The correct option really describes the photographed dish, and no distractor does."""
    data = load_foodieqa(demo[0], check_images=False)
    by_zh = {d.zh: d for d in sd.DISHES}
    by_key = {d.key: d for d in sd.DISHES}
    for item in data.sivqa:
        dish = by_key[item.image.split("/")[1]]
        assert item.food_name == dish.zh
        zh, en = sd._attr(dish, item.question_type)
        assert item.choices[item.answer] == zh and item.choices_en[item.answer] == en
        assert zh not in item.choices[:item.answer] + item.choices[item.answer + 1:]
    for item in data.mivqa:
        target = by_zh[item.food_name]
        dishes = [by_key[p.split("/")[1]] for p in item.images]
        assert dishes[item.answer] == target
        matching = [d for d in dishes if sd._attr(d, item.question_type) == sd._attr(target, item.question_type)]
        assert len(matching) == 1, item.question_id


def test_dishes_metadata():
    assert len(sd.DISHES) >= 12 and len({d.cuisine for d in sd.DISHES}) >= 6
    assert len({d.zh for d in sd.DISHES}) == len(sd.DISHES) == len({d.en for d in sd.DISHES})
    assert len({d.key for d in sd.DISHES}) == len(sd.DISHES)
    names = {d.zh for d in sd.DISHES}
    assert {"麻婆豆腐", "北京烤鸭", "白切鸡"} <= names
    # looks are distinct: no two dishes share vessel, piece shape and sauce colour
    looks = {(d.vessel, d.piece, d.sauce) for d in sd.DISHES}
    assert len(looks) == len(sd.DISHES)


def test_dishes_are_learnable_from_pixels(demo):
    """A nearest-centroid classifier on 6x6 colour thumbnails tells dishes apart far above chance (1/16)."""
    out = demo[0]
    feats, labels = [], []
    for k, dish in enumerate(sd.DISHES):
        for p in sorted((out / "images" / dish.key).glob("*.jpg")):
            img = Image.open(p)
            img.draft("RGB", (img.width // 8, img.height // 8))
            w, h = img.size
            centre = img.convert("RGB").crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((6, 6), Image.BILINEAR)
            feats.append(np.asarray(centre, dtype=np.float32).ravel())
            labels.append(k)
    feats, labels = np.stack(feats), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([feats[train & (labels == k)].mean(0) for k in range(len(sd.DISHES))])
    dist = ((feats[~train, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == labels[~train]).mean()
    assert accuracy > 0.5, accuracy


def test_deterministic_per_seed(demo, tmp_path):
    out = demo[0]
    again = tmp_path / "again"
    sd.make_demo_data(again, seed=0)
    assert tree_digest(again) == tree_digest(out)
    other = tmp_path / "other"
    sd.make_demo_data(other, seed=1, photos_per_dish=2, num_dishes=4, mivqa_per_dish=1)
    small = tmp_path / "small"
    sd.make_demo_data(small, seed=0, photos_per_dish=2, num_dishes=4, mivqa_per_dish=1)
    assert tree_digest(other) != tree_digest(small)


def test_atomic_write_and_force(tmp_path, monkeypatch):
    out = tmp_path / "data"
    with pytest.raises(FileExistsError):  # an existing folder that is not this synthetic data
        sd.make_demo_data(tmp_path, photos_per_dish=1, num_dishes=4)
    sd.make_demo_data(out, photos_per_dish=2, num_dishes=4, mivqa_per_dish=1)
    before = tree_digest(out)

    calls = {"n": 0}
    real = sd.draw_dish

    def failing(dish, rng):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(dish, rng)

    monkeypatch.setattr(sd, "draw_dish", failing)
    with pytest.raises(RuntimeError):
        sd.make_demo_data(out, seed=3, force=True, photos_per_dish=2, num_dishes=4)
    assert tree_digest(out) == before  # the earlier output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left behind
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        sd.make_demo_data(tmp_path / "fresh", photos_per_dish=2, num_dishes=4)
    assert not (tmp_path / "fresh").exists()


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools/make_demo_data.py"), "--out", str(out), "--seed", "5",
           "--photos-per-dish", "2", "--dishes", "4", "--mivqa-per-dish", "1", "--no-textqa"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "8 images" in r.stdout and not (out / "textqa_tidy.json").exists()
    before = tree_digest(out)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # same settings: nothing to do
    assert r.returncode == 0 and "nothing to do" in r.stdout and tree_digest(out) == before
    r = subprocess.run(cmd[:-1] + ["--seed", "6"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--force" in r.stderr and tree_digest(out) == before
    r = subprocess.run(cmd + ["--seed", "6", "--force"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert tree_digest(out) != before
