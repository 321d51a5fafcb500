"""The FoodieQA tasks, one entry each. A new task is one ``Task`` in ``TASKS`` (and its tests): reading
(foodie.foodieqa), prompts (foodie.prompts), training data and split (foodie.data_conversion) and evaluation follow it.

Collation: evaluation passes every image in order; XTuner's dataset takes one image a sample, so training passes the
one image, a 2x2 collage of four, or none. Held-out rule: ``"images"``: held out when all its images are, dropped
when they straddle the split; ``"dish"``: with its dish's images, else a seeded coin. Templates: the authors'
(lyan62/FoodieQA ``model-eval/scripts/``), string for string, by number (``--template N``); options are written
``（A) `` (full-width open, ASCII close) as their code does; a reply prefix (``我选择（``) is what the model continues.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NamedTuple

LETTERS = "ABCD"  # the options of every FoodieQA question; answers 0-3 index them
NUM_CHOICES = len(LETTERS)
IMAGE_PLACEHOLDER = "<image>"  # where an image goes in user text (foodie.inference expands it)


class Template(NamedTuple):
    user: str  # {q}: the question; {options}: the option list; <image>: an image, in order A-D
    reply_prefix: str = ""
    swap: tuple[str, str] | None = None  # the authors' word swap ("以下" -> "以上" when the images come first)


@dataclass(frozen=True)
class Task:
    name: str
    title: str  # in reports
    images: int  # per question: 0, 1 or NUM_CHOICES
    image_key: str | None  # where an item names its image(s): a path, or a list when images > 1
    choices: bool  # options are texts; False: the options are the images
    held_out: str  # "images" | "dish" (module docstring)
    templates: dict[str, tuple[Template, ...]]

    @property
    def collage(self) -> bool:
        return self.images > 1

    def image_field(self, k: int) -> str:  # for error messages
        return self.image_key if self.images == 1 else f"{self.image_key}[{k}]"


_IMAGES_ZH = "".join(f"{IMAGE_PLACEHOLDER}图{x}\n" for x in LETTERS)
_IMAGES_EN = "".join(f"{IMAGE_PLACEHOLDER}Option ({x})\n" for x in LETTERS)
_PICK_ZH = "请从给定选项ABCD中选择一个最合适的答案。"

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sivqa", "single-image VQA", 1, "food_meta.food_file", choices=True, held_out="images", templates={
        "zh": (
            Template("{q} 选项有: {options}, 请根据上图从所提供的选项中选择一个正确答案，为（"),
            Template("你是一个人工智能助手，请你看图回答以下选择题：{q} 选项有: {options}, 请从中选择一个正确答案，为（"),
            Template("你是一个智能助手，现在请看图回答以下选择题：{q} 选项有: {options}", "我从所提供的选项中选择一个正确答案，为（"),
            Template("{q} 这是选项: {options} 请根据上图从所提供的选项中选择一个正确答案。", "我选择（"),
            Template("{q} 这是选项: {options} 请根据上图从所提供的选项中选择一个正确答案。"
                     "请保证你的答案清晰简洁并输出字母选项。", "我选择（"),
        ),
        "en": (
            Template("{q} Here are the options: {options} If had to select one of the options, my answer would be ("),
            Template("You are an AI assistant. Please answer the following multiple choice question based on the "
                     "image: {q} Here are the options: {options} Please select one of the options as your answer ("),
            Template("{q} Here are the options: {options}", "If had to select one of the options, my answer would be ("),
            Template("{q} These are the options: {options} Please select one of the options as your answer.",
                     "I would select ("),
        ),
    }),
    Task("mivqa", "multi-image VQA", NUM_CHOICES, "images", choices=False, held_out="images", templates={
        "zh": (
            Template(f"{IMAGE_PLACEHOLDER}\n" * 4 + f"根据以上四张图回答问题，他们分别为图A, 图B, 图C, 图D, {_PICK_ZH}问题：{{q}}, 答案为：图",
                     swap=("以下", "以上")),
            Template(f"{_IMAGES_ZH}根据以上四张图回答问题, {_PICK_ZH}问题：{{q}}, 答案为：图", swap=("以下", "以上")),
            Template(f"根据以下四张图回答问题,{_PICK_ZH}{_IMAGES_ZH}问题：{{q}}, 答案为：图", swap=("以下", "以上")),
            Template(f"问题{{q}}，选项有: {_IMAGES_ZH}", "如果从给定选项ABCD中选择一个最合适的答案， 答案为：图",
                     swap=("以上", "以下")),
        ),
        "en": (
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
        ),
    }),
    Task("textqa", "text-only QA", 0, None, choices=True, held_out="dish", templates={
        "zh": (
            Template("{q} 选项有: {options}, 请根据从所提供的选项中选择一个正确答案，为（"),
            Template("你是一个智能助手，请你回答以下选择题：{q} 选项有: {options}, 请从中选择一个正确答案，为（"),
            Template("你是一个智能助手，现在回答以下选择题：{q} 选项有: {options}\n", "我从所提供的选项中选择一个正确答案，为（"),
            Template("{q} 这是选项: {options} 请从所提供的选项中选择一个正确答案。请保证你的答案清晰简洁并输出字母选项。\n",
                     "我选择（"),
        ),
        "en": (
            Template("{q} Here are the options: {options} If I had to select one of the options, my answer would be ("),
            Template("You are an AI assistant. Please answer the following multiple choice question: {q} Here are the "
                     "options: {options} Please select one of the options as your answer ("),
            Template("{q} Here are the options: {options}", "If I had to select one of the options, my answer would be ("),
            Template("{q} These are the options: {options} Please select one of the options as your answer.",
                     "I would select ("),
        ),
    }),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def parse_tasks(text: str) -> tuple[str, ...]:
    """``--tasks sivqa,mivqa`` (an argparse ``type``)."""
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tasks or any(t not in TASKS for t in tasks):
        raise argparse.ArgumentTypeError(f"tasks must be a comma list of {', '.join(TASKS)}; got {text!r}")
    return tasks
