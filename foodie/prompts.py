"""Prompt wording, in one place: the FoodieQA authors' question templates (zh and en).

The templates are those of the FoodieQA evaluation scripts (template 0; Li et al., EMNLP 2024), so
our numbers are comparable with the published ones. They are *user text*: the inference backend
renders them through the model's own chat template (system message, ``<image>`` -> image tokens).

* single-image (SIVQA): ``{question} 选项有: （A) ...\\n（B) ...\\n..., 请根据上图从所提供的选项中选择一个正确答案，为（``
  (the options are written ``（A) `` -- full-width open, ASCII close -- as the authors' code does);
* multi-image (MIVQA): the four images first (image A-D), then the question; the answer is an
  image letter.

The prompt ends where the answer letter is expected ("为（", "would be ("), so a model that
follows it starts its reply with the letter.
"""
from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"  # where an image goes in user text (foodie.inference expands it)
LETTERS = "ABCD"


def format_choices(choices) -> str:
    """The authors' option list: one ``（A) text`` line per option."""
    return "".join(f"（{LETTERS[i]}) {c.strip()}\n" for i, c in enumerate(choices))


def sivqa_prompt(question: str, choices, lang: str = "zh") -> str:
    """Single-image multiple choice, authors' template 0. The image goes before this text."""
    opts = format_choices(choices)
    if lang == "zh":
        return f"{question.strip()} 选项有: {opts}, 请根据上图从所提供的选项中选择一个正确答案，为（"
    if lang == "en":
        return f"{question.strip()} Here are the options: {opts} If had to select one of the options, my answer would be ("
    raise ValueError(f"unknown language {lang!r}: use 'zh' or 'en'")


def mivqa_prompt(question: str, lang: str = "zh", n_images: int = 4) -> str:
    """Multi-image multiple choice, authors' template 0: the images (A-D) first, then the question."""
    images = f"{IMAGE_PLACEHOLDER}\n" * n_images
    if lang == "zh":
        q = question.strip().replace("以下", "以上")  # the images come before the question
        return (f"{images}根据以上四张图回答问题，他们分别为图A, 图B, 图C, 图D, 请从给定选项ABCD中选择一个最合适的答案。"
                f"问题：{q}, 答案为：图")
    if lang == "en":
        return (f"{images}Answer the following question according to the provided four images which corresponds to "
                f"Option (A), Option (B), Option (C), Option (D). Choose one best answer from the given options. "
                f"Question: {question.strip()}, your answer is: Option (")
    raise ValueError(f"unknown language {lang!r}: use 'zh' or 'en'")


def question_prompt(item, lang: str = "zh") -> tuple[str, list[str]]:
    """(user text, image paths relative to the data root) for a FoodieQA item (foodie.foodieqa)."""
    if lang == "en" and not item.question_en:
        raise ValueError(f"{item.task} question {item.question_id} has no question_en: evaluate it with lang 'zh'")
    question = item.question_en if lang == "en" else item.question
    if item.task == "sivqa":
        choices = item.choices_en if lang == "en" else item.choices
        if not choices:
            raise ValueError(f"sivqa question {item.question_id} has no choices_en: evaluate it with lang 'zh'")
        return sivqa_prompt(question, choices, lang), list(item.images)
    if item.task == "mivqa":
        return mivqa_prompt(question, lang, len(item.images)), list(item.images)
    raise ValueError(f"no prompt template for task {item.task!r} (templates: sivqa, mivqa)")


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


def textqa_prompt(question: str, choices, lang: str = "zh") -> str:
    """Text-only multiple choice, authors' text-QA template 0."""
    opts = format_choices(choices)
    if lang == "zh":
        return f"{question.strip()} 选项有: {opts}, 请根据从所提供的选项中选择一个正确答案，为（"
    if lang == "en":
        return f"{question.strip()} Here are the options: {opts} If I had to select one of the options, my answer would be ("
    raise ValueError(f"unknown language {lang!r}: use 'zh' or 'en'")


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

    name:     the dish first, then the chosen option by its text: ``图中的菜是白切鸡。答案是粤菜。``
              (multi-image: ``答案是图B。图B中的菜是白切鸡。``; no known dish: ``答案是粤菜。``);
    letter:   ``B) 粤菜`` (multi-image: ``B) 图B``);
    explain:  the letter answer, then a sentence naming the dish (so the model does not turn terse);
    tutorial: the tutorial's exact ``{choice}，图中的菜是{food_name}``.
    Letter and explain answers start with the option letter; name answers carry the option's text after
    "答案是" / "The answer is". The evaluation parses both (``foodie.evaluation.parse_choice``).

    ``name`` is the default: it does not depend on where an option sits in the list (a letter answer
    asks the model to bind each option's text to its letter, which a small model learns slowly and a
    reshuffled list breaks), and saying the dish first makes the answer follow from what is in the
    picture. docs/TRAINING.md compares the styles.
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
