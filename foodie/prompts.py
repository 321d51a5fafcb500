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
