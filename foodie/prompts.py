"""Prompt wording: the user text of the authors' FoodieQA templates (foodie.tasks; template 0 is the default, as in
their scripts), and the training answers. A prompt ends where the answer letter is expected ("为（", "would be (");
the inference backend renders it through the model's own chat template (system message, image tokens).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from foodie.tasks import IMAGE_PLACEHOLDER, LETTERS, Template, get_task

DEFAULT_TEMPLATE = 0
ANSWER_STYLES = ("name", "letter", "explain", "tutorial")
IMAGE_OPTIONS = {"zh": [f"图{x}" for x in LETTERS], "en": [f"Option ({x})" for x in LETTERS]}  # options that are images
# XTuner's InternVL_V1_5_Dataset takes one image a sample: multi-image questions are trained on a 2x2 collage.
COLLAGE_INTRO = {
    "zh": "这张图由四张图拼成：左上为图A，右上为图B，左下为图C，右下为图D。",
    "en": "This picture is made of four pictures: top left is Option (A), top right Option (B), "
          "bottom left Option (C), bottom right Option (D). ",
}


class EvalPrompt(NamedTuple):
    user: str  # user text; one <image> per image, in the order of ``images``
    images: list[str]  # paths relative to the data root
    reply_prefix: str  # the start of the reply the model continues ("" for most templates)


def _check_lang(lang: str) -> None:
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown language {lang!r}: use 'zh' or 'en'")


def get_template(task: str, lang: str, number: int = DEFAULT_TEMPLATE) -> Template:
    _check_lang(lang)
    shipped = get_task(task).templates[lang]
    if not 0 <= number < len(shipped):
        raise ValueError(f"--template {number}: the authors ship {task} {lang} templates 0-{len(shipped) - 1}")
    return shipped[number]


def format_choices(choices) -> str:
    """The authors' option list: one ``（A) text`` line per option."""
    return "".join(f"（{LETTERS[i]}) {c.strip()}\n" for i, c in enumerate(choices))


def user_text(task: str, question: str, choices=None, lang: str = "zh", template: int = DEFAULT_TEMPLATE,
              n_images: int = 4) -> str:
    """A task's prompt for a question (``n_images=0`` drops the image placeholders)."""
    t = get_template(task, lang, template)
    q = question.strip().replace(*t.swap) if t.swap else question.strip()
    fields = {"{q}": q, "{options}": format_choices(choices) if choices else ""}
    text = re.sub(r"\{q\}|\{options\}", lambda m: fields[m.group()], t.user)  # one pass: text stays text
    return text.replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "") if n_images == 0 else text


def question_prompt(item, lang: str = "zh", template: int = DEFAULT_TEMPLATE) -> EvalPrompt:
    """The authors' prompt for a FoodieQA item (foodie.foodieqa) in a language and template."""
    question, choices = item_text(item, lang)
    text = user_text(item.task, question, choices, lang, template, n_images=len(item.images))
    return EvalPrompt(text, list(item.images), get_template(item.task, lang, template).reply_prefix)


def item_text(item, lang: str):
    """(question, choices or None) of an item in a language; ValueError if the item lacks that language."""
    _check_lang(lang)
    if lang == "zh":
        return item.question, item.choices
    if not item.question_en or (item.choices is not None and not item.choices_en):
        raise ValueError(f"{item.task} question {item.question_id} has no English text "
                         f"(question_en/choices_en): use lang 'zh'")
    return item.question_en, item.choices_en


def has_lang(item, lang: str) -> bool:
    return lang == "zh" or bool(item.question_en and (item.choices is None or item.choices_en))


def training_prompt(item, lang: str = "zh", style: str = "letter") -> str:
    """The user turn of a training sample: the evaluation's wording about the one image XTuner feeds (a collage for
    multi-image questions); the tutorial style asks the bare question, as it did."""
    question, choices = item_text(item, lang)
    if style == "tutorial":
        return f"{question}\n{IMAGE_PLACEHOLDER}" if item.images else question
    task = get_task(item.task)
    text = user_text(item.task, question, choices, lang, n_images=0)
    intro = COLLAGE_INTRO[lang] if task.collage else ""
    return f"{IMAGE_PLACEHOLDER}\n{intro}{text}" if task.images else text


def answer_text(item, lang: str = "zh", style: str = "letter") -> str:
    """The assistant turn of a training sample (docs/TRAINING.md compares the styles under the authors' scoring):
    letter ``B) 粤菜`` (the default: FoodieQA's scoring reads the letter); name ``图中的菜是白切鸡。答案是粤菜。``
    (no letter: scores 1/4); explain: the letter answer, then a sentence naming the dish; tutorial: the tutorial's
    ``{choice}，图中的菜是{food_name}``. Options that are images are named ``图B`` / ``Option (B)``."""
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}: choose from {', '.join(ANSWER_STYLES)}")
    zh = lang == "zh"
    _, choices = item_text(item, lang)
    letter = LETTERS[item.answer]
    dish = (item.food_meta.get("food_name_en") or item.raw.get("food_name_en")) if not zh else None
    dish = dish or item.food_name or item.food_meta.get("food_name")
    if options_are_images := not get_task(item.task).choices:
        option = IMAGE_OPTIONS[lang][item.answer]
        subject = f"{option}中的菜" if zh else f"The dish in {option}"
    else:
        option = choices[item.answer]
        subject = ("图中的菜" if zh else "The dish in the picture") if item.images else ("这道菜" if zh else "The dish")
    if style == "name":
        answer, about = (f"答案是{option}。", f"{subject}是{dish}。") if zh else \
                        (f"The answer is {option}.", f"{subject} is {dish}.")
        parts = [answer, about] if options_are_images else [about, answer]
        return ("" if zh else " ").join(parts) if dish else answer
    if style == "tutorial":
        return option if not dish else f"{option}，图中的菜是{dish}" if zh else f"{option}, the dish in the picture is {dish}"
    head = f"{letter}) {option}"
    if style == "letter":
        return head
    if zh:
        cuisine = f"，属于{item.cuisine}" if item.cuisine and item.cuisine != "unknown" else ""
        return f"{head}。" + (f"{subject}是{dish}{cuisine}。" if dish else "") + f"所以答案是（{letter}) {option}。"
    cuisine = f", from {item.food_meta['cuisine_en']}" if item.food_meta.get("cuisine_en") else ""
    return f"{head}. " + (f"{subject} is {dish}{cuisine}. " if dish else "") + f"So the answer is ({letter}) {option}."
