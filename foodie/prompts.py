"""Prompt wording, in one place: the FoodieQA authors' question templates (zh and en), and training text.

Every template the authors ship (lyan62/FoodieQA, ``model-eval/scripts/``: ``sivqa_utils.format_text_prompt``,
``textqa_utils.format_text_prompt``, the multi-image prompts of ``eval_mivqa_en.get_prompt_phi`` /
the README) is here, string for string, selectable by number (``tools/eval_food.py --template N``):

* single-image (SIVQA): zh 0-4, en 0-3. Template 0: ``{question} 选项有: （A) ...\\n（B) ...\\n...,
  请根据上图从所提供的选项中选择一个正确答案，为（`` (options written ``（A) `` -- full-width open, ASCII
  close -- as the authors' code does); the image goes before the text;
* multi-image (MIVQA): zh 0-3, en 0-3; the four images (A-D, in the file's order) where the template
  puts them; the answer is an image letter;
* text-only (TextQA): zh 0-3, en 0-3.

Some templates end with the start of the assistant's reply (``我选择（``, ``I would select (``): the
model continues that text (``EvalPrompt.reply_prefix``), as the authors' chat-format runs did.
Template 0 is the default: the authors' scripts default to it (their TextQA table reports each model's
best of 0-3). The prompts end where the answer letter is expected ("为（", "would be ("), so a model
that follows them starts its reply with the letter. They are *user text*: the inference backend
renders them through the model's own chat template (system message, ``<image>`` -> image tokens).
"""
from __future__ import annotations

import re
from typing import NamedTuple

IMAGE_PLACEHOLDER = "<image>"  # where an image goes in user text (foodie.inference expands it)
LETTERS = "ABCD"
DEFAULT_TEMPLATE = 0


class Template(NamedTuple):
    """One of the authors' prompts: user text, the start of the reply the model continues, and the
    word swap they apply to a multi-image question ("以下" -> "以上" when the images come first)."""
    user: str  # {q}: the question; {options}: the option list; <image>: an image, in order A-D
    reply_prefix: str = ""
    swap: tuple[str, str] | None = None


_IMAGES_ZH = "".join(f"{IMAGE_PLACEHOLDER}图{x}\n" for x in LETTERS)
_IMAGES_EN = "".join(f"{IMAGE_PLACEHOLDER}Option ({x})\n" for x in LETTERS)
_PICK_ZH = "请从给定选项ABCD中选择一个最合适的答案。"

TEMPLATES: dict[str, dict[str, list[Template]]] = {
    "sivqa": {
        "zh": [
            Template("{q} 选项有: {options}, 请根据上图从所提供的选项中选择一个正确答案，为（"),
            Template("你是一个人工智能助手，请你看图回答以下选择题：{q} 选项有: {options}, 请从中选择一个正确答案，为（"),
            Template("你是一个智能助手，现在请看图回答以下选择题：{q} 选项有: {options}", "我从所提供的选项中选择一个正确答案，为（"),
            Template("{q} 这是选项: {options} 请根据上图从所提供的选项中选择一个正确答案。", "我选择（"),
            Template("{q} 这是选项: {options} 请根据上图从所提供的选项中选择一个正确答案。请保证你的答案清晰简洁并输出字母选项。",
                     "我选择（"),
        ],
        "en": [
            Template("{q} Here are the options: {options} If had to select one of the options, my answer would be ("),
            Template("You are an AI assistant. Please answer the following multiple choice question based on the "
                     "image: {q} Here are the options: {options} Please select one of the options as your answer ("),
            Template("{q} Here are the options: {options}", "If had to select one of the options, my answer would be ("),
            Template("{q} These are the options: {options} Please select one of the options as your answer.",
                     "I would select ("),
        ],
    },
    "mivqa": {
        "zh": [
            Template(f"{IMAGE_PLACEHOLDER}\n" * 4 + f"根据以上四张图回答问题，他们分别为图A, 图B, 图C, 图D, {_PICK_ZH}问题：{{q}}, 答案为：图",
                     swap=("以下", "以上")),
            Template(f"{_IMAGES_ZH}根据以上四张图回答问题, {_PICK_ZH}问题：{{q}}, 答案为：图", swap=("以下", "以上")),
            Template(f"根据以下四张图回答问题,{_PICK_ZH}{_IMAGES_ZH}问题：{{q}}, 答案为：图", swap=("以下", "以上")),
            Template(f"问题{{q}}，选项有: {_IMAGES_ZH}", "如果从给定选项ABCD中选择一个最合适的答案， 答案为：图",
                     swap=("以上", "以下")),
        ],
        "en": [
            Template(f"{IMAGE_PLACEHOLDER}\n" * 4 + "Answer the following question according to the provided four "
                     "images which corresponds to Option (A), Option (B), Option (C), Option (D). Choose one best "
                     "answer from the given options. Question: {q}, your answer is: Option ("),
            Template("Answer the following question according to the provided four images, which corresponds to "
                     "Option (A), Option (B), Option (C), Option (D). Choose one best answer from the given options. "
                     f"{_IMAGES_EN}Question: {{q}}, your answer is: Option ("),
            Template("Answer the following question according to the provided four images, and choose one best "
                     f"answer from the given options. {_IMAGES_EN}Question: {{q}}, your answer is: Option ("),
            Template("Question{q} The options are: " + "".join(f"Option ({x}){IMAGE_PLACEHOLDER}\n" for x in LETTERS),
                     "If I have to choose one best answer from the given options， the answer is：Option ("),
        ],
    },
    "textqa": {
        "zh": [
            Template("{q} 选项有: {options}, 请根据从所提供的选项中选择一个正确答案，为（"),
            Template("你是一个智能助手，请你回答以下选择题：{q} 选项有: {options}, 请从中选择一个正确答案，为（"),
            Template("你是一个智能助手，现在回答以下选择题：{q} 选项有: {options}\n", "我从所提供的选项中选择一个正确答案，为（"),
            Template("{q} 这是选项: {options} 请从所提供的选项中选择一个正确答案。请保证你的答案清晰简洁并输出字母选项。\n", "我选择（"),
        ],
        "en": [
            Template("{q} Here are the options: {options} If I had to select one of the options, my answer would be ("),
            Template("You are an AI assistant. Please answer the following multiple choice question: {q} Here are the "
                     "options: {options} Please select one of the options as your answer ("),
            Template("{q} Here are the options: {options}", "If I had to select one of the options, my answer would be ("),
            Template("{q} These are the options: {options} Please select one of the options as your answer.",
                     "I would select ("),
        ],
    },
}


def get_template(task: str, lang: str, number: int = DEFAULT_TEMPLATE) -> Template:
    if task not in TEMPLATES:
        raise ValueError(f"no prompt templates for task {task!r} (tasks: {', '.join(TEMPLATES)})")
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown language {lang!r}: use 'zh' or 'en'")
    shipped = TEMPLATES[task][lang]
    if not 0 <= number < len(shipped):
        raise ValueError(f"--template {number}: the authors ship {task} {lang} templates 0-{len(shipped) - 1}")
    return shipped[number]


def format_choices(choices) -> str:
    """The authors' option list: one ``（A) text`` line per option."""
    return "".join(f"（{LETTERS[i]}) {c.strip()}\n" for i, c in enumerate(choices))


def fill(template: Template, question: str, choices=None, n_images: int = 4) -> str:
    """A template's user text for one question (``n_images=0`` drops the image placeholders)."""
    q = question.strip()
    if template.swap:
        q = q.replace(*template.swap)
    fields = {"{q}": q, "{options}": format_choices(choices) if choices else ""}
    text = re.sub(r"\{q\}|\{options\}", lambda m: fields[m.group()], template.user)  # one pass: text stays text
    if n_images == 0:
        text = text.replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "")
    return text


def sivqa_prompt(question: str, choices, lang: str = "zh", template: int = DEFAULT_TEMPLATE) -> str:
    """Single-image multiple choice (user text; the image goes before it)."""
    return fill(get_template("sivqa", lang, template), question, choices)


def mivqa_prompt(question: str, lang: str = "zh", n_images: int = 4, template: int = DEFAULT_TEMPLATE) -> str:
    """Multi-image multiple choice: the images (A-D) where the template puts them, and the question."""
    return fill(get_template("mivqa", lang, template), question, n_images=n_images)


def textqa_prompt(question: str, choices, lang: str = "zh", template: int = DEFAULT_TEMPLATE) -> str:
    """Text-only multiple choice."""
    return fill(get_template("textqa", lang, template), question, choices)


class EvalPrompt(NamedTuple):
    user: str  # user text; one <image> per image, in the order of ``images``
    images: list[str]  # paths relative to the data root
    reply_prefix: str  # the start of the reply the model continues ("" for most templates)


def question_prompt(item, lang: str = "zh", template: int = DEFAULT_TEMPLATE) -> EvalPrompt:
    """The authors' prompt for a FoodieQA item (foodie.foodieqa) in a language and template."""
    question, choices = item_text(item, lang)
    t = get_template(item.task, lang, template)
    images = list(item.images)
    return EvalPrompt(fill(t, question, choices, n_images=len(images)), images, t.reply_prefix)


# ---------------------------------------------------------------------------------------------
# Training data (foodie.data_conversion): text-only questions, the multi-image collage, answers
# ---------------------------------------------------------------------------------------------

ANSWER_STYLES = ("name", "letter", "explain", "tutorial")
# XTuner's InternVL_V1_5_Dataset takes one image per sample, so multi-image questions are trained on a
# 2x2 collage of their four pictures (A top-left, B top-right, C bottom-left, D bottom-right).
MIVQA_LABELS = {"zh": ["图A", "图B", "图C", "图D"], "en": ["Option (A)", "Option (B)", "Option (C)", "Option (D)"]}
COLLAGE_INTRO = {
    "zh": "这张图由四张图拼成：左上为图A，右上为图B，左下为图C，右下为图D。",
    "en": "This picture is made of four pictures: top left is Option (A), top right Option (B), "
          "bottom left Option (C), bottom right Option (D). ",
}


def item_text(item, lang: str):
    """(question, choices or None) of an item in a language; ValueError if the item lacks that language."""
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown language {lang!r}: use 'zh' or 'en'")
    choices = getattr(item, "choices", None)
    if lang == "zh":
        return item.question, choices
    choices_en = getattr(item, "choices_en", None)
    if not item.question_en or (choices is not None and not choices_en):
        raise ValueError(f"{item.task} question {item.question_id} has no English text "
                         f"(question_en/choices_en): use lang 'zh'")
    return item.question_en, choices_en


def has_lang(item, lang: str) -> bool:
    try:
        item_text(item, lang)
        return True
    except ValueError:
        return False


def training_prompt(item, lang: str = "zh", style: str = "letter") -> str:
    """The user turn of a training sample (``<image>`` marks the one image XTuner feeds).

    Same wording as evaluation asks; multi-image questions are asked about their 2x2 collage; the
    tutorial style asks the bare question (no options), as the tutorial did.
    """
    question, choices = item_text(item, lang)
    if style == "tutorial":
        return f"{question}\n{IMAGE_PLACEHOLDER}" if item.images else question
    if item.task == "sivqa":
        return f"{IMAGE_PLACEHOLDER}\n{sivqa_prompt(question, choices, lang)}"
    if item.task == "mivqa":
        return f"{IMAGE_PLACEHOLDER}\n{COLLAGE_INTRO[lang]}{mivqa_prompt(question, lang, n_images=0)}"
    if item.task == "textqa":
        return textqa_prompt(question, choices, lang)
    raise ValueError(f"no prompt template for task {item.task!r}")


def _dish_name(item, lang: str):
    meta = getattr(item, "food_meta", None) or {}
    if lang == "en":
        name = meta.get("food_name_en") or item.raw.get("food_name_en")
        if name:
            return name
    return item.food_name or meta.get("food_name")


def answer_text(item, lang: str = "zh", style: str = "letter") -> str:
    """The assistant turn of a training sample, in one of ``ANSWER_STYLES``.

    letter:   ``B) 粤菜`` (multi-image: ``B) 图B``): the default;
    name:     the dish first, then the chosen option by its text: ``图中的菜是白切鸡。答案是粤菜。``
              (multi-image: ``答案是图B。图B中的菜是白切鸡。``; no known dish: ``答案是粤菜。``);
    explain:  the letter answer, then a sentence naming the dish (so the model does not turn terse);
    tutorial: the tutorial's exact ``{choice}，图中的菜是{food_name}``.

    ``letter`` is the default because FoodieQA's scoring (``foodie.scoring``) reads only a letter, the first
    capital A-D of the reply, and it answers what was asked, letter and option text. A name answer has none
    and counts 1/4; the option-text diagnostic (``foodie.scoring.option_text_reading``) reads both.
    docs/TRAINING.md compares the styles under the authors' scoring.
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}: choose from {', '.join(ANSWER_STYLES)}")
    _, choices = item_text(item, lang)
    letter = LETTERS[item.answer]
    dish = _dish_name(item, lang)
    if item.task == "mivqa":
        option = MIVQA_LABELS[lang][item.answer]
        subject = f"{option}中的菜" if lang == "zh" else f"The dish in {option}"
    else:
        option = choices[item.answer]
        subject = ("图中的菜" if lang == "zh" else "The dish in the picture") if item.images else \
                  ("这道菜" if lang == "zh" else "The dish")
    if style == "name":
        if lang == "zh":
            answer = f"答案是{option}。"
            if not dish:
                return answer
            return f"{answer}{subject}是{dish}。" if item.task == "mivqa" else f"{subject}是{dish}。{answer}"
        answer = f"The answer is {option}."
        if not dish:
            return answer
        return f"{answer} {subject} is {dish}." if item.task == "mivqa" else f"{subject} is {dish}. {answer}"
    if style == "tutorial":
        if not dish:
            return option
        return f"{option}，图中的菜是{dish}" if lang == "zh" else f"{option}, the dish in the picture is {dish}"
    head = f"{letter}) {option}"
    if style == "letter":
        return head
    cuisine = item.cuisine if item.cuisine and item.cuisine != "unknown" else None
    if lang == "zh":
        about = (f"{subject}是{dish}" + (f"，属于{cuisine}" if cuisine else "") + "。") if dish else ""
        return f"{head}。{about}所以答案是（{letter}) {option}。"
    cuisine_en = (getattr(item, "food_meta", None) or {}).get("cuisine_en")
    about = (f"{subject} is {dish}" + (f", from {cuisine_en}" if cuisine_en else "") + ". ") if dish else ""
    return f"{head}. {about}So the answer is ({letter}) {option}."
