"""FoodieQA -> XTuner conversion: exact training text per task and answer style, an honest split
(no image in both), clear refusals of bad input, atomic outputs, and data XTuner really loads."""
from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from foodie import data_conversion as dc
from foodie.held_out import read_held_out
from foodie import synthetic_data as sd
from foodie.foodieqa import FoodieQAError, load_foodieqa

REPO = Path(__file__).resolve().parent.parent


# --- a small hand-written FoodieQA folder -------------------------------------------------------

def write_small(root: Path) -> Path:
    """4 images of 4 cuisines (so a 20% stratified split holds none out), one item per task."""
    sizes = {"a": (600, 400), "b": (400, 400), "c": (300, 500), "d": (800, 800)}
    for name, size in sizes.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 60, 30)).save(root / "images" / f"{name}.jpg")
    meta = {"a": ("白切鸡", "粤菜"), "b": ("麻婆豆腐", "川菜"), "c": ("东坡肉", "浙菜"), "d": ("羊肉串", "新疆菜")}
    sivqa = [{
        "question_id": f"s-{k}", "question": "图片中的食物属于哪个菜系？",
        "choices": ["川菜", "粤菜", "鲁菜", "苏菜"], "answer": "1",
        "question_en": "Which cuisine does the food in the picture belong to?",
        "choices_en": ["Sichuan", "Cantonese", "Shandong", "Jiangsu"],
        "food_name": meta[k][0], "question_type": "cuisine_type",
        "food_meta": {"food_file": f"images/{k}.jpg", "food_name": meta[k][0], "food_type": meta[k][1]},
    } for k in "abcd"]
    mivqa = [{"qid": "m-1", "question": "以下哪张图是麻婆豆腐？", "question_en": "Which picture shows Mapo tofu?",
              "images": ["images/a.jpg", "images/b.jpg", "images/c.jpg", "images/d.jpg"], "answer": "1",
              "food_name": "麻婆豆腐"}]
    textqa = [{"question_id": "t-1", "question": "白切鸡属于哪个菜系？", "choices": ["粤菜", "川菜", "湘菜", "鲁菜"],
               "answer": "0", "food_name": "白切鸡", "question_type": "cuisine_type"}]
    for name, items in (("sivqa", sivqa), ("mivqa", mivqa), ("textqa", textqa)):
        (root / f"{name}_tidy.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return root


def convert(src, out, **kw):
    kw.setdefault("eval_ratio", 0.1)  # round(0.1 * 4 images) = 0: the small folder is all training data
    return dc.convert_foodieqa(src, out, dc.ConversionOptions(**kw))


def train_by_id(out):
    return {s["id"]: s for s in json.loads((out / "train.json").read_text(encoding="utf-8"))}


SIVQA_ZH = ("<image>\n图片中的食物属于哪个菜系？ 选项有: （A) 川菜\n（B) 粤菜\n（C) 鲁菜\n（D) 苏菜\n, "
            "请根据上图从所提供的选项中选择一个正确答案，为（")
MIVQA_ZH = ("<image>\n这张图由四张图拼成：左上为图A，右上为图B，左下为图C，右下为图D。根据以上四张图回答问题，他们分别为图A, 图B, "
            "图C, 图D, 请从给定选项ABCD中选择一个最合适的答案。问题：以上哪张图是麻婆豆腐？, 答案为：图")
TEXTQA_ZH = "白切鸡属于哪个菜系？ 选项有: （A) 粤菜\n（B) 川菜\n（C) 湘菜\n（D) 鲁菜\n, 请根据从所提供的选项中选择一个正确答案，为（"

GOLDEN = {
    "name": {
        "sivqa:s-a:zh": (SIVQA_ZH, "图中的菜是白切鸡。答案是粤菜。"),
        "mivqa:m-1:zh": (MIVQA_ZH, "答案是图B。图B中的菜是麻婆豆腐。"),
        "textqa:t-1:zh": (TEXTQA_ZH, "这道菜是白切鸡。答案是粤菜。"),
    },
    "letter": {
        "sivqa:s-a:zh": (SIVQA_ZH, "B) 粤菜"),
        "mivqa:m-1:zh": (MIVQA_ZH, "B) 图B"),
        "textqa:t-1:zh": (TEXTQA_ZH, "A) 粤菜"),
    },
    "explain": {
        "sivqa:s-a:zh": (SIVQA_ZH, "B) 粤菜。图中的菜是白切鸡，属于粤菜。所以答案是（B) 粤菜。"),
        "mivqa:m-1:zh": (MIVQA_ZH, "B) 图B。图B中的菜是麻婆豆腐，属于川菜。所以答案是（B) 图B。"),
        "textqa:t-1:zh": (TEXTQA_ZH, "A) 粤菜。这道菜是白切鸡，属于粤菜。所以答案是（A) 粤菜。"),
    },
    "tutorial": {
        "sivqa:s-a:zh": ("图片中的食物属于哪个菜系？\n<image>", "粤菜，图中的菜是白切鸡"),
        "mivqa:m-1:zh": ("以下哪张图是麻婆豆腐？\n<image>", "图B，图中的菜是麻婆豆腐"),
        "textqa:t-1:zh": ("白切鸡属于哪个菜系？", "粤菜，图中的菜是白切鸡"),
    },
}


@pytest.mark.parametrize("style", sorted(GOLDEN))
def test_golden_conversion_per_style_and_task(tmp_path, style):
    src = write_small(tmp_path / "src")
    out = tmp_path / "out"
    result = convert(src, out, tasks=("sivqa", "mivqa", "textqa"), style=style)
    samples = train_by_id(out)
    assert not any(c["held_out"] for c in result["items"].values()) and len(samples) == 6  # 4 sivqa + 1 mivqa + 1 textqa
    for sid, (human, gpt) in GOLDEN[style].items():
        conv = samples[sid]["conversations"]
        assert conv == [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}], sid
    s = samples["sivqa:s-a:zh"]
    assert s["image"] == str((src / "images/a.jpg").resolve()) and s["image_wh"] == [[600, 400]]
    m = samples["mivqa:m-1:zh"]
    assert m["image"] == str(out / "collages/m-1.jpg") and m["image_wh"] == [[896, 896]]
    assert "image" not in samples["textqa:t-1:zh"]


def test_english_and_both_languages(tmp_path):
    src = write_small(tmp_path / "src")
    out = tmp_path / "out"
    result = convert(src, out, tasks=("sivqa", "mivqa", "textqa"), lang="both", style="letter")
    samples = train_by_id(out)
    assert samples["sivqa:s-b:en"]["conversations"] == [
        {"from": "human", "value": "<image>\nWhich cuisine does the food in the picture belong to? Here are the options: "
                                   "（A) Sichuan\n（B) Cantonese\n（C) Shandong\n（D) Jiangsu\n If had to select one of "
                                   "the options, my answer would be ("},
        {"from": "gpt", "value": "B) Cantonese"}]
    assert samples["mivqa:m-1:en"]["conversations"][1]["value"] == "B) Option (B)"
    assert "textqa:t-1:en" not in samples  # no English text: skipped and counted
    assert result["skipped_no_translation"] == {"textqa:en": 1}
    assert len(samples) == 11


def test_collage_is_four_tiles_in_answer_order(tmp_path):
    src = write_small(tmp_path / "src")
    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0)}
    for k, c in colours.items():
        Image.new("RGB", Image.open(src / f"images/{k}.jpg").size, c).save(src / f"images/{k}.png")
    items = json.loads((src / "mivqa_tidy.json").read_text())
    items[0]["images"] = [f"images/{k}.png" for k in "abcd"]
    (src / "mivqa_tidy.json").write_text(json.dumps(items, ensure_ascii=False))
    convert(src, tmp_path / "out", tasks=("mivqa",), eval_ratio=0.05)  # nothing held out of 8 images
    from foodie.image_tiling import dynamic_preprocess, open_image
    tiles = dynamic_preprocess(open_image(tmp_path / "out/collages/m-1.jpg"))
    assert len(tiles) == 5  # 2x2 + thumbnail: each tile is exactly one of the four pictures
    for tile, k in zip(tiles, "abcd"):
        r, g, b = tile.getpixel((224, 224))
        assert all(abs(x - y) < 40 for x, y in zip((r, g, b), colours[k])), (k, (r, g, b))


# --- split invariants ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    sd.make_demo_data(root, seed=0, photos_per_dish=4, mivqa_per_dish=3)
    return root


def used_images(out: Path) -> set[str]:
    """Every original image the training data shows (collage sources included)."""
    held = json.loads((out / "held_out.json").read_text())
    root = Path(held["data_root"])
    mivqa = {m["question_id"]: m for m in json.loads((root / "mivqa_tidy.json").read_text())}
    used = set()
    for s in json.loads((out / "train.json").read_text()):
        if s["id"].startswith("mivqa:"):
            used |= set(mivqa[s["id"].split(":")[1]]["images"])
        elif "image" in s:
            used.add(Path(s["image"]).relative_to(root).as_posix())
    return used


def held_out_images(out: Path) -> set[str]:
    held = json.loads((out / "held_out.json").read_text())
    imgs = set(held["images"])
    for item in held["items"]["sivqa"]:
        assert item["food_meta"]["food_file"] in imgs
    for item in held["items"]["mivqa"]:
        assert set(item["images"]) <= imgs
    return imgs


@pytest.mark.parametrize("split_by", ["image", "dish"])
def test_no_image_or_dish_in_both_splits(synthetic, tmp_path, split_by):
    out = tmp_path / "out"
    r = convert(synthetic, out, tasks=("sivqa", "mivqa", "textqa"), split_by=split_by, lang="both", eval_ratio=0.2)
    train, held = used_images(out), held_out_images(out)
    assert train and held and not (train & held)
    counts = r["items"]
    assert counts["sivqa"]["held_out"] > 0 and counts["mivqa"]["train"] > 0
    if split_by == "image":  # whole multi-image questions are packed into the held-out images
        assert counts["mivqa"]["held_out"] > 0
    else:
        dish = lambda p: p.split("/")[1]  # noqa: E731  synthetic images live in images/<dish>/
        assert not ({dish(p) for p in train} & {dish(p) for p in held})


def test_held_out_manifest_has_untouched_items(small_foodieqa_dir, tmp_path):
    out = tmp_path / "out"
    convert(small_foodieqa_dir, out, tasks=("sivqa",), eval_ratio=0.2)
    held = json.loads((out / "held_out.json").read_text())
    originals = {i["question_id"]: i for i in json.loads((small_foodieqa_dir / "sivqa_tidy.json").read_text())}
    assert held["items"]["sivqa"] and all(originals[i["question_id"]] == i for i in held["items"]["sivqa"])
    ids = read_held_out(out / "held_out.json", ["sivqa", "mivqa"])
    assert ids["sivqa"] == {i["question_id"] for i in held["items"]["sivqa"]}
    trained = {s["id"].split(":")[1] for s in json.loads((out / "train.json").read_text())}
    assert not (trained & ids["sivqa"])
    with pytest.raises(ValueError, match="not a held-out manifest"):
        read_held_out(out / "summary.json")


def test_split_deterministic_and_seeded(small_foodieqa_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        convert(small_foodieqa_dir, out, tasks=("sivqa", "mivqa"), seed=1, eval_ratio=0.2, check_images=False)
    for name in ("train.json", "held_out.json"):
        assert (a / name).read_text().replace(str(a), "") == (b / name).read_text().replace(str(b), "")
    data = load_foodieqa(small_foodieqa_dir, check_images=False)
    other_seed = dc.make_split(data, dc.ConversionOptions(tasks=("sivqa", "mivqa"), seed=2, eval_ratio=0.2))
    assert json.loads((a / "held_out.json").read_text())["images"] != sorted(other_seed.eval_images)


def test_split_stratified_by_cuisine(small_foodieqa_dir, tmp_path):
    out = tmp_path / "out"
    convert(small_foodieqa_dir, out, tasks=("sivqa",), eval_ratio=0.25, mivqa_eval_share=0.0, check_images=False)
    held = json.loads((out / "held_out.json").read_text())
    total = Counter(i["food_meta"]["cuisine"] for i in json.loads((small_foodieqa_dir / "sivqa_tidy.json").read_text()))
    held_counts = Counter(i["food_meta"]["cuisine"] for i in held["items"]["sivqa"])
    for cuisine, n in total.items():
        assert held_counts[cuisine] == round(0.25 * n), cuisine  # every cuisine held out in proportion


def test_summary_counts_and_token_budget(tmp_path):
    src = write_small(tmp_path / "src")
    Image.new("RGB", (1600, 1200)).save(src / "images/d.jpg")  # 4x3 grid + thumbnail = 13 tiles
    s = convert(src, tmp_path / "out", tasks=("sivqa", "mivqa", "textqa"))
    assert s["items"]["sivqa"] == {"train": 4, "held_out": 0, "dropped_straddling": 0}
    assert s["images"] == {"total": 4, "held_out": 0, "train": 4, "normalised_copies": 0}
    assert s["by_cuisine"]["粤菜"]["sivqa:train"] == 1 and s["by_question_type"]["sivqa:cuisine_type"] == {"train": 4}
    tk = s["tokens_per_sample"]
    assert tk["sivqa"]["max"] > 13 * 256 + 2 > tk["sivqa"]["min"]  # the 1600x1200 photo is the longest sample
    assert tk["mivqa"]["min"] > 5 * 256 and tk["textqa"]["max"] < 256
    assert tk["suggested_max_length"] >= tk["all"]["max"] and tk["over_max_length"] == 0
    md = (tmp_path / "out/summary.md").read_text()
    assert "| sivqa | 4 | 0 | 0 |" in md and "Suggested max_length" in md
    r = convert(src, tmp_path / "out", tasks=("sivqa",), max_length=3000)  # only the 13-tile photo is over
    assert r["tokens_per_sample"]["over_max_length"] == 1


def test_rotated_and_transparent_images_get_upright_copies(tmp_path):
    src = write_small(tmp_path / "src")
    img = Image.new("RGB", (600, 300), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(src / "images/a.jpg", exif=exif.tobytes())
    Image.new("RGBA", (400, 400), (0, 0, 0, 0)).save(src / "images/b.png")
    items = json.loads((src / "sivqa_tidy.json").read_text())
    items[1]["food_meta"]["food_file"] = "images/b.png"
    (src / "sivqa_tidy.json").write_text(json.dumps(items, ensure_ascii=False))
    out = tmp_path / "out"
    r = convert(src, out, tasks=("sivqa",))
    samples = train_by_id(out)
    assert r["images"]["normalised_copies"] == 2
    a = samples["sivqa:s-a:zh"]
    assert a["image"] == str(out / "normalised/images/a.jpg.png") and a["image_wh"] == [[300, 600]]
    assert Image.open(a["image"]).size == (300, 600)  # what XTuner reads is upright now
    assert Image.open(samples["sivqa:s-b:zh"]["image"]).convert("RGB").getpixel((5, 5)) == (255, 255, 255)


# --- bad input ----------------------------------------------------------------------------------

def test_bad_inputs_rejected_with_file_item_field(tmp_path):
    src = write_small(tmp_path / "src")
    items = json.loads((src / "sivqa_tidy.json").read_text())
    items[0]["answer"] = "7"
    items[1]["choices"] = items[1]["choices"][:3]
    items[2]["question_id"] = items[3]["question_id"]
    items[3]["food_meta"]["food_file"] = "../outside.jpg"
    items.append(dict(items[0], question_id="abs", answer="0", food_meta={"food_file": "/tmp/x.jpg"}))
    items.append(dict(items[0], question_id="gone", answer="0", food_meta={"food_file": "images/gone.jpg"}))
    items.append(dict(items[0], question_id="broken", answer="0", food_meta={"food_file": "images/broken.jpg"}))
    (src / "images/broken.jpg").write_bytes(b"\xff\xd8 not really")
    (src / "sivqa_tidy.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(FoodieQAError) as e:
        convert(src, out, tasks=("sivqa",))
    msg, f = str(e.value), str(src / "sivqa_tidy.json")
    for needle in (f"{f}: item 0 (id s-a): field 'answer': value '7' is out of range",
                   f"{f}: item 1 (id s-b): field 'choices': expected a list of 4 choices, found 3",
                   f"{f}: item 3 (id s-d): field 'question_id': duplicate id",
                   f"{f}: item 3 (id s-d): field 'food_meta.food_file': image path '../outside.jpg' climbs out",
                   f"{f}: item 4 (id abs): field 'food_meta.food_file': image path '/tmp/x.jpg' is absolute",
                   f"{f}: item 5 (id gone): field 'food_meta.food_file': images/gone.jpg: image file not found",
                   f"{f}: item 6 (id broken): field 'food_meta.food_file': images/broken.jpg: not a decodable image"):
        assert needle in msg, needle
    assert not out.exists()
    r = convert(src, out, tasks=("sivqa",), skip_bad=True)
    assert len(train_by_id(out)) == 1 and len(r["skipped_bad_items"]) == 7  # s-c is the only good one
    assert "Skipped bad items (7)" in (out / "summary.md").read_text()


def test_non_utf8_file_rejected(tmp_path):
    src = write_small(tmp_path / "src")
    (src / "textqa_tidy.json").write_bytes("[{\"question\": \"白切鸡\"}]".encode("gbk"))
    with pytest.raises(FoodieQAError, match=r"textqa_tidy.json: not UTF-8 text"):
        convert(src, tmp_path / "out", tasks=("sivqa",))


def test_options_validated_and_missing_task_file(tmp_path):
    src = write_small(tmp_path / "src")
    (src / "textqa_tidy.json").unlink()
    with pytest.raises(FileNotFoundError, match="textqa_tidy.json"):
        convert(src, tmp_path / "out", tasks=("textqa",))
    for bad in (dict(lang="fr"), dict(style="short"), dict(eval_ratio=1.0), dict(split_by="cuisine"), dict(tasks=("vqa",))):
        with pytest.raises(ValueError):
            convert(src, tmp_path / "out", **bad)


def test_option_orders_move_the_letter_with_its_option_in_training_only(tmp_path):
    src = write_small(tmp_path / "src")
    one, three = tmp_path / "one", tmp_path / "three"
    convert(src, one, tasks=("sivqa", "mivqa", "textqa"), lang="both")
    s = convert(src, three, tasks=("sivqa", "mivqa", "textqa"), lang="both", option_orders=3)
    train = train_by_id(three)
    assert s["train_samples"] == len(train) == 3 * 4 * 2 + 2 + 3  # sivqa x 4 in zh, en; mivqa (images) once a lang
    assert not s["skipped_no_translation"].get("textqa:zh") and s["skipped_no_translation"]["textqa:en"] == 1
    assert "in 3 option orders" in (three / "summary.md").read_text()
    for lang, answer in (("zh", "粤菜"), ("en", "Cantonese")):
        orders = [train[f"sivqa:s-a:{lang}{suffix}"] for suffix in ("", ":order1", ":order2")]
        assert orders[0] == train_by_id(one)[f"sivqa:s-a:{lang}"]  # the first order is the question's own
        lists = [re.findall(r"[（(]([A-D])\) ([^\n]+)\n", o["conversations"][0]["value"]) for o in orders]
        assert len({tuple(text for _, text in ls) for ls in lists}) == 3  # three different orders
        for o, ls in zip(orders, lists):
            letter = dict((text, letter) for letter, text in ls)[answer]
            assert o["conversations"][1]["value"] == f"{letter}) {answer}"  # the letter moved with its option
            assert o["image"] == orders[0]["image"]
    zh = [s for s in train if s.startswith("sivqa:s-a:zh")]
    en_orders = [re.findall(r"\) (\w+)\n", train[i.replace(":zh", ":en")]["conversations"][0]["value"]) for i in zh]
    zh_orders = [re.findall(r"\) (\w+)\n", train[i]["conversations"][0]["value"]) for i in zh]
    english = dict(zip(["川菜", "粤菜", "鲁菜", "苏菜"], ["Sichuan", "Cantonese", "Shandong", "Jiangsu"]))
    assert all([english[w] for w in z] == e for z, e in zip(zh_orders, en_orders))  # both languages in one order
    # Held-out questions are never reordered, and the orders are a function of the seed.
    a, b = tmp_path / "a", tmp_path / "b"
    convert(src, a, tasks=("sivqa",), eval_ratio=0.25, check_images=False)
    convert(src, b, tasks=("sivqa",), eval_ratio=0.25, check_images=False, option_orders=24)
    assert (a / "held_out.json").read_text().replace(str(a), "") == (b / "held_out.json").read_text().replace(str(b), "")
    assert len(train_by_id(b)) == 24 * 3  # every order of the 3 training questions
    c = tmp_path / "c"
    convert(src, c, tasks=("sivqa",), eval_ratio=0.25, check_images=False, option_orders=24)
    assert (b / "train.json").read_text().replace(str(b), "") == (c / "train.json").read_text().replace(str(c), "")
    for bad in (0, 25, 2.5):
        with pytest.raises(ValueError, match="option_orders must be a whole number from 1 to 24"):
            convert(src, tmp_path / "bad", option_orders=bad)


# --- atomic outputs -----------------------------------------------------------------------------

def test_failed_run_keeps_earlier_output(tmp_path, monkeypatch):
    src = write_small(tmp_path / "src")
    out = tmp_path / "out"
    convert(src, out, tasks=("sivqa", "mivqa"))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dc, "make_collage", boom)
    with pytest.raises(RuntimeError):
        convert(src, out, tasks=("sivqa", "mivqa"), style="letter")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an output of process_food"):
        convert(src, tmp_path / "other")


# --- command line and XTuner --------------------------------------------------------------------

def test_cli(tmp_path, run_tool):
    run_cli = functools.partial(run_tool, "tools/process_food.py")
    src = write_small(tmp_path / "src")
    r = run_cli("--data-root", src, "--out", tmp_path / "out", "--tasks", "sivqa,textqa",
                "--eval-ratio", "0.1", "--accept-foodieqa-terms")  # a hand-written folder counts as FoodieQA
    assert r.returncode == 0, r.stderr
    assert "sivqa: 4 train, 0 held out" in r.stdout and (tmp_path / "out/train.json").is_file()
    # The default answer starts with the option letter, which the FoodieQA authors' parser reads (first A-D).
    answers = {s["id"]: s["conversations"][1]["value"] for s in train_by_id(tmp_path / "out").values()}
    assert answers["sivqa:s-a:zh"] == GOLDEN["letter"]["sivqa:s-a:zh"][1] == "B) 粤菜"
    assert answers["textqa:t-1:zh"] == "A) 粤菜"
    r = run_cli("--data-root", tmp_path / "nowhere", "--out", tmp_path / "out2")
    assert r.returncode == 2 and "not a folder" in r.stderr and not (tmp_path / "out2").exists()
    r = run_cli("--data-root", src, "--out", tmp_path / "out3", "--tasks", "sivqa,pictures")
    assert r.returncode == 2 and "tasks must be" in r.stderr
    r = run_cli("--data-root", src, "--out", tmp_path / "out5", "--option-orders", "25", "--accept-foodieqa-terms")
    assert r.returncode == 2 and "option_orders must be" in r.stderr and not (tmp_path / "out5").exists()
    r = run_cli("--data-root", src, "--out", tmp_path / "out4", "--tokenizer", tmp_path / "src",  # not a model
                "--accept-foodieqa-terms")
    assert r.returncode == 2 and "config.json" in r.stderr and "InternVL2 checkpoint folder" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out4").exists()


def test_token_budget_is_the_models_own(tmp_path, tiny_model_dir, run_tool):
    """process_food --tokenizer MODEL sizes image tokens with the model's tile side, tokens per tile and tile
    budget (a tuned tiny model: 224 px, 64 tokens, 2 tiles), and summary.md says so."""
    import shutil
    model = tmp_path / "tuned-tiny-for-tokens"  # remote code is cached by folder name: one of its own
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(config, max_dynamic_patch=2)))
    r = run_tool("tools/process_food.py", "--data-root", write_small(tmp_path / "src"), "--out", tmp_path / "out",
                 "--tokenizer", model, "--accept-foodieqa-terms")
    assert r.returncode == 0, r.stderr
    options = json.loads((tmp_path / "out/summary.json").read_text())["options"]
    assert (options["tile_size"], options["image_tokens_per_tile"], options["max_tiles"]) == (224, 64, 2)
    assert "Image tokens: 64 per 224-px tile, up to 2 tiles + a thumbnail, + 2." in (tmp_path / "out/summary.md").read_text()


def test_synthetic_data_loads_through_xtuner_dataset(synthetic, tmp_path, tiny_model_dir, monkeypatch):
    from foodie.image_tiling import num_tiles
    from foodie.model_spec import ModelSpec

    model = tiny_model_dir
    out = tmp_path / "xtuner"
    spec = ModelSpec.from_checkpoint(model)  # as process_food --tokenizer MODEL reads it
    tile, per_tile = spec.tile_size, spec.tokens_per_tile
    convert(synthetic, out, tasks=("sivqa", "mivqa", "textqa"), lang="both", tile_size=tile,
            image_tokens_per_tile=per_tile)
    from xtuner.dataset import InternVL_V1_5_Dataset
    from xtuner.utils import PROMPT_TEMPLATE
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # image paths must not depend on the working directory
    ds = InternVL_V1_5_Dataset(str(model), PROMPT_TEMPLATE.internlm2_chat, str(out / "train.json"),
                               image_folders=str(out), max_length=8192)
    samples = json.loads((out / "train.json").read_text())
    assert len(ds) == len(samples)
    img_ctx = ds.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    for k in (0, next(i for i, s in enumerate(samples) if s["id"].startswith("mivqa")),
              next(i for i, s in enumerate(samples) if s["id"].startswith("textqa"))):
        item = ds.prepare_data(k)
        assert item is not None, samples[k]["id"]  # None would mean XTuner failed to read the image
        n_ctx = sum(t == img_ctx for t in item["input_ids"])
        if "image" in samples[k]:
            w, h = samples[k]["image_wh"][0]
            assert n_ctx == num_tiles(w, h, image_size=tile) * per_tile == item["pixel_values"].shape[0] * per_tile
            if samples[k]["id"].startswith("mivqa"):  # the collage is cut back into its 4 pictures + a thumbnail
                assert item["pixel_values"].shape[0] == 5
        else:
            assert n_ctx == 0
        assert any(lbl >= 0 for lbl in item["labels"])  # the answer is trained on


def test_token_budget_with_tokenizer_bounds_real_lengths(tmp_path, tiny_model_dir):
    """Counted with the model's tokenizer, the budget is never below the sequence XTuner builds."""
    from transformers import AutoTokenizer
    from xtuner.dataset import InternVL_V1_5_Dataset
    from xtuner.utils import PROMPT_TEMPLATE
    src = write_small(tmp_path / "src")
    out = tmp_path / "out"
    from foodie.model_spec import ModelSpec

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir), trust_remote_code=True)
    spec = ModelSpec.from_checkpoint(tiny_model_dir)  # what process_food --tokenizer MODEL reads
    opts = dc.ConversionOptions(tasks=("sivqa", "mivqa", "textqa"), eval_ratio=0.1, tile_size=spec.tile_size,
                                image_tokens_per_tile=spec.tokens_per_tile)
    r = dc.convert_foodieqa(src, out, opts, tokenizer=tok)
    tk = r["tokens_per_sample"]
    assert tk["counted_with"] == "tokenizer"
    ds = InternVL_V1_5_Dataset(str(tiny_model_dir), PROMPT_TEMPLATE.internlm2_chat, str(out / "train.json"),
                               image_folders=str(out), max_length=100000)
    real = {}
    for k, sample in enumerate(json.loads((out / "train.json").read_text())):
        real[sample["id"].split(":")[0]] = max(real.get(sample["id"].split(":")[0], 0), len(ds.prepare_data(k)["input_ids"]))
    for task, n in real.items():
        assert n <= tk[task]["max"] <= n + dc.TEMPLATE_OVERHEAD_TOKENS, (task, n, tk[task])
