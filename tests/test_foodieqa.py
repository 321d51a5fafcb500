"""Reading and validating FoodieQA folders: tolerant of shape, strict about meaning, clear about problems."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from foodie.foodieqa import FoodieQAError, cuisine_of, load_foodieqa


def make_image(path, size=(40, 30), colour=(200, 80, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=80)


def sivqa_item(qid, image, answer="1", **extra):
    item = {
        "question_id": qid,
        "question": "图片中的食物是哪个菜系？",
        "choices": ["川菜", "粤菜", "鲁菜", "苏菜"],
        "answer": answer,
        "question_en": "Which cuisine does the food in the picture belong to?",
        "choices_en": ["Sichuan", "Cantonese", "Shandong", "Jiangsu"],
        "food_name": "白切鸡",
        "question_type": "cuisine_type",
        "food_meta": {"food_file": image, "food_name": "白切鸡", "food_type": "粤菜（广东等地）", "id": 7},
    }
    item.update(extra)
    return item


def write_folder(root, sivqa=None, mivqa=None, textqa=None, images=("images/a.jpg", "images/b.jpg",
                                                                     "images/c.jpg", "images/d.jpg")):
    for k, p in enumerate(images):
        make_image(root / p, size=(40 + k, 30))
    for name, items in (("sivqa", sivqa), ("mivqa", mivqa), ("textqa", textqa)):
        if items is not None:
            # ensure_ascii: a lone surrogate can only live in a file as a JSON escape
            (root / f"{name}_tidy.json").write_text(json.dumps(items), encoding="utf-8")
    return root


@pytest.fixture
def good(tmp_path):
    sivqa = [sivqa_item("s1", "images/a.jpg", "1", extra_field={"x": 1}),
             sivqa_item("s2", "images/b.jpg", "0")]
    sivqa[1]["food_meta"]["food_type"] = "川菜（四川，重庆）"
    sivqa[1]["food_name"] = sivqa[1]["food_meta"]["food_name"] = "麻婆豆腐"
    del sivqa[1]["question_en"], sivqa[1]["choices_en"]  # optional fields may be missing
    mivqa = [{"qid": 17, "question": "以下哪张图是麻婆豆腐？", "images": ["images/c.jpg", "images/b.jpg",
                                                                    "images/a.jpg", "images/d.jpg"],
              "answer": "1", "question_type": "dish"}]
    textqa = [{"question_id": "t1", "question": "白切鸡属于哪个菜系？", "choices": ["粤菜", "川菜", "湘菜", "鲁菜"],
               "answer": 0, "food_name": "白切鸡"}]
    return write_folder(tmp_path, sivqa, mivqa, textqa)


def test_reads_all_tasks_with_clean_fields(good):
    data = load_foodieqa(good)
    assert [i.task for i in data.items()] == ["sivqa", "sivqa", "mivqa", "textqa"]
    s1, s2 = data.sivqa
    assert (s1.question_id, s1.answer, s1.image) == ("s1", 1, "images/a.jpg")
    assert s1.choices_en[1] == "Cantonese" and s1.cuisine == "粤菜（广东等地）"
    assert s1.raw["extra_field"] == {"x": 1}  # extra fields kept, untouched
    assert s2.question_en is None and s2.choices_en is None and s2.cuisine == "川菜（四川，重庆）"
    m = data.mivqa[0]
    assert m.question_id == "17" and m.images == ["images/c.jpg", "images/b.jpg", "images/a.jpg", "images/d.jpg"]
    assert m.answer == 1 and m.cuisine == "川菜（四川，重庆）"  # looked up through the correct image (b.jpg)
    t = data.textqa[0]
    assert t.images == [] and t.answer == 0 and t.cuisine == "粤菜（广东等地）"  # via food_name
    assert data.image_sizes["images/a.jpg"] == (40, 30) and data.image_sizes["images/d.jpg"] == (43, 30)
    assert data.image_paths() == ["images/a.jpg", "images/b.jpg", "images/c.jpg", "images/d.jpg"]
    assert data.path("images/a.jpg") == (good / "images/a.jpg").resolve()
    assert len(data) == 4


def test_only_existing_files_unless_tasks_named(tmp_path):
    root = write_folder(tmp_path, sivqa=[sivqa_item("s1", "images/a.jpg")])
    data = load_foodieqa(root)
    assert list(data.files) == ["sivqa"] and data.mivqa == []
    with pytest.raises(FoodieQAError, match="mivqa_tidy.json: file not found"):
        load_foodieqa(root, tasks=["sivqa", "mivqa"])
    with pytest.raises(FoodieQAError, match="no question files"):
        load_foodieqa(tmp_path / "images")
    with pytest.raises(FoodieQAError, match="not a folder"):
        load_foodieqa(tmp_path / "nowhere")


def test_json_lines_accepted(tmp_path):
    root = write_folder(tmp_path)
    lines = [json.dumps(sivqa_item(f"s{k}", "images/a.jpg"), ensure_ascii=False) for k in range(3)]
    (root / "sivqa_tidy.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [i.question_id for i in load_foodieqa(root).sivqa] == ["s0", "s1", "s2"]


def test_cuisine_lookup():
    assert cuisine_of({"cuisine": "川菜 Sichuan", "food_type": "x"}) == "川菜 Sichuan"
    assert cuisine_of({"food_type": "粤菜（广东等地）"}) == "粤菜（广东等地）"
    assert cuisine_of({"region": ["东北"]}) == "东北"
    assert cuisine_of({"food_name": "x"}) == "unknown" and cuisine_of(None) == "unknown"


def bad_folder(tmp_path):
    """One item per bad-input case the issue lists, plus one good item."""
    items = [
        sivqa_item("ok", "images/a.jpg"),
        sivqa_item("range", "images/a.jpg", answer="4"),
        sivqa_item("three", "images/a.jpg", choices=["a", "b", "c"]),
        sivqa_item("ok", "images/b.jpg"),  # duplicate id
        sivqa_item("abs", "/etc/passwd"),
        sivqa_item("climb", "images/../../secret.jpg"),
        sivqa_item("missing", "images/nothere.jpg"),
        sivqa_item("broken", "images/broken.jpg"),
        sivqa_item("surrogate", "images/a.jpg", question="bad \udc80 text"),
        sivqa_item("letter", "images/a.jpg", answer="B"),
    ]
    del items[-1]["question"]  # and a missing required field on the same item
    root = write_folder(tmp_path, sivqa=items)
    (root / "images/broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def test_all_problems_reported_with_file_item_field_and_fix(tmp_path):
    root = bad_folder(tmp_path)
    with pytest.raises(FoodieQAError) as e:
        load_foodieqa(root)
    msg = str(e.value)
    f = str(root / "sivqa_tidy.json")
    expect = [
        f"{f}: item 1 (id range): field 'answer': value '4' is out of range; use \"0\"-\"3\"",
        f"{f}: item 2 (id three): field 'choices': expected a list of 4 choices, found 3",
        f"{f}: item 3 (id ok): field 'question_id': duplicate id, also used by item 0",
        f"{f}: item 4 (id abs): field 'food_meta.food_file': image path '/etc/passwd' is absolute",
        f"{f}: item 5 (id climb): field 'food_meta.food_file': image path 'images/../../secret.jpg' climbs out",
        f"{f}: item 6 (id missing): field 'food_meta.food_file': images/nothere.jpg: image file not found",
        f"{f}: item 7 (id broken): field 'food_meta.food_file': images/broken.jpg: not a decodable image",
        f"{f}: item 8 (id surrogate): field 'question': contains characters that are not valid UTF-8",
        f"{f}: item 9 (id letter): field 'question': missing",
        f"{f}: item 9 (id letter): field 'answer': value 'B' is out of range",
    ]
    for line in expect:
        assert line in msg, line
    assert len(e.value.problems) == len(expect)
    assert "--skip-bad" in msg


def test_skip_bad_drops_and_reports(tmp_path):
    data = load_foodieqa(bad_folder(tmp_path), skip_bad=True)
    assert [i.question_id for i in data.sivqa] == ["ok"]
    assert sorted({p.index for p in data.skipped}) == list(range(1, 10))
    assert {p.item_id for p in data.skipped if p.field == "food_meta.food_file"} == {"abs", "climb", "missing", "broken"}


def test_all_missing_images_listed_not_just_first(tmp_path):
    items = [sivqa_item(f"q{k}", f"images/gone{k}.jpg") for k in range(5)]
    root = write_folder(tmp_path, sivqa=items)
    with pytest.raises(FoodieQAError) as e:
        load_foodieqa(root)
    assert len(e.value.problems) == 5
    for k in range(5):
        assert f"images/gone{k}.jpg: image file not found" in str(e.value)
    assert len(load_foodieqa(root, check_images=False).sivqa) == 5  # checks can be turned off


def test_mivqa_problems(tmp_path):
    items = [{"qid": "m1", "question": "q", "images": ["images/a.jpg", "images/b.jpg"], "answer": "0"},
             {"qid": "m2", "question": "q", "images": ["images/a.jpg", "images/b.jpg", "images/c.jpg",
                                                       "../d.jpg"], "answer": "3"},
             {"question": "no id", "images": ["images/a.jpg"] * 4, "answer": "0"}]
    root = write_folder(tmp_path, mivqa=items)
    with pytest.raises(FoodieQAError) as e:
        load_foodieqa(root)
    msg = str(e.value)
    assert "item 0 (id m1): field 'images': expected a list of 4 image paths, found 2" in msg
    assert "item 1 (id m2): field 'images[3]': image path '../d.jpg' climbs out" in msg
    assert "item 2: field 'question_id': missing" in msg


def test_non_utf8_and_invalid_json_files(tmp_path):
    root = write_folder(tmp_path)
    (root / "sivqa_tidy.json").write_bytes(json.dumps([sivqa_item("s1", "images/a.jpg")],
                                                      ensure_ascii=False).encode("gb18030"))
    with pytest.raises(FoodieQAError, match=r"sivqa_tidy.json: not UTF-8 text .*line 1.*re-save the file as UTF-8"):
        load_foodieqa(root)
    (root / "sivqa_tidy.json").write_text('[{"question_id": "s1",\n "question": }]', encoding="utf-8")
    with pytest.raises(FoodieQAError, match=r"sivqa_tidy.json: invalid JSON at line 2"):
        load_foodieqa(root)
    (root / "sivqa_tidy.json").write_text('"just a string"', encoding="utf-8")
    with pytest.raises(FoodieQAError, match="expected a JSON list"):
        load_foodieqa(root)
    (root / "sivqa_tidy.json").write_text('[]', encoding="utf-8")
    (root / "textqa_tidy.json").write_bytes(b"\xff\xfe junk")
    with pytest.raises(FoodieQAError, match="textqa_tidy.json: not UTF-8"):
        load_foodieqa(root, skip_bad=True)  # a broken file is never skipped silently


def test_exif_rotated_image_size_is_upright(tmp_path):
    img = Image.new("RGB", (60, 20))
    exif = Image.Exif()
    exif[0x0112] = 8
    (tmp_path / "images").mkdir()
    img.save(tmp_path / "images/r.jpg", exif=exif.tobytes())
    root = write_folder(tmp_path, sivqa=[sivqa_item("s", "images/r.jpg")], images=())
    assert load_foodieqa(root).image_sizes == {"images/r.jpg": (20, 60)}
