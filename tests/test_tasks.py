"""The FoodieQA task table (foodie/tasks.py): a new task is one entry, and reading, prompting, training data and
the held-out split follow it with no other edit."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from foodie import prompts
from foodie.data_conversion import ConversionOptions, convert_foodieqa
from foodie.foodieqa import FoodieQAError, load_foodieqa
from foodie.tasks import LETTERS, TASKS, Task, Template, parse_tasks


def test_every_task_has_the_authors_templates_in_both_languages():
    for task in TASKS.values():
        assert set(task.templates) == {"zh", "en"} and all(task.templates.values()), task.name
        for lang, shipped in task.templates.items():
            for t in shipped:  # every option list / image is placed by the template, never appended
                assert ("{options}" in t.user) == task.choices, (task.name, lang, t.user)
                assert t.user.count("<image>") in (0, task.images), (task.name, lang, t.user)
    assert parse_tasks(" sivqa,textqa ") == ("sivqa", "textqa")
    with pytest.raises(Exception, match="tasks must be a comma list of sivqa, mivqa, textqa"):
        parse_tasks("sivqa,pictures")


# A task the authors do not have: which dish is in the picture, asked about a photo and its name's origin.
DISHQA = Task("dishqa", "dish naming", 1, "photo", choices=True, held_out="images", templates={
    "zh": (Template("这道菜叫什么？{options}答案：（"),),
    "en": (Template("What is this dish called? {options}Answer: ("),),
})


def test_a_new_task_is_one_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(TASKS, "dishqa", DISHQA)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    items = []
    for k in range(10):
        Image.new("RGB", (64, 48), (20 * k, 80, 30)).save(root / f"images/{k}.jpg")
        items.append({"question_id": f"d{k}", "question": "?", "choices": ["白切鸡", "麻婆豆腐", "东坡肉", "羊肉串"],
                      "answer": str(k % 4), "photo": f"images/{k}.jpg", "food_name": f"dish{k}"})
    items[9]["photo"] = "../outside.jpg"
    (root / "dishqa_tidy.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")

    with pytest.raises(FoodieQAError, match=r"item 9 \(id d9\): field 'photo': image path '../outside.jpg' climbs out"):
        load_foodieqa(root)
    data = load_foodieqa(root, skip_bad=True)
    assert [it.images for it in data.dishqa[:2]] == [["images/0.jpg"], ["images/1.jpg"]] and len(data.dishqa) == 9

    asked = prompts.question_prompt(data.dishqa[1], "zh")
    assert asked == ("这道菜叫什么？（A) 白切鸡\n（B) 麻婆豆腐\n（C) 东坡肉\n（D) 羊肉串\n答案：（", ["images/1.jpg"], "")

    result = convert_foodieqa(root, tmp_path / "out", ConversionOptions(tasks=("dishqa",), eval_ratio=0.3,
                                                                         skip_bad=True))
    samples = json.loads((tmp_path / "out/train.json").read_text(encoding="utf-8"))
    held = json.loads((tmp_path / "out/held_out.json").read_text(encoding="utf-8"))
    assert result["items"]["dishqa"] == {"train": 6, "held_out": 3, "dropped_straddling": 0}
    assert len(samples) == 6 and len(held["question_ids"]["dishqa"]) == 3
    trained = {s["image"].rsplit("/", 1)[-1] for s in samples}
    assert not trained & {p.rsplit("/", 1)[-1] for p in held["images"]}  # no held-out photo is trained on
    s = samples[0]
    k = int(s["id"].split(":")[1][1:])
    assert s["conversations"][0]["value"].startswith("<image>\n这道菜叫什么？（A) 白切鸡")
    assert s["conversations"][1]["value"] == f"{LETTERS[k % 4]}) {items[k]['choices'][k % 4]}"
