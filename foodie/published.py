"""FoodieQA accuracy published by its authors (lyan62/FoodieQA README; Li et al., EMNLP 2024): every row of
their tables, marks kept. All measured on the FULL test set, never a held-out split: shown only beside a run on
the real FoodieQA, always labelled as the full set.
"""
from __future__ import annotations

SOURCE = "Li et al., FoodieQA (EMNLP 2024); tables of github.com/lyan62/FoodieQA README"
SCOPE = "full test set"
# The authors mark the human accuracy on the English questions with a dagger; the paper explains it.
DAGGER_NOTE = "† as marked by the authors (human accuracy on the English questions; see the paper)"
TEXTQA_NOTE = ("TextQA: each model's best accuracy over the authors' text prompts 0-3 (the prompt is named), "
               "Chinese questions")

VQA_COLUMNS = ("mivqa/zh", "mivqa/en", "sivqa/zh", "sivqa/en")
_VQA = [  # accuracy % ("-": not evaluated by the authors), marks as theirs
    ("Human", "91.69", "77.22†", "74.41", "46.53†"),
    ("Phi-3-vision-4.2B", "29.03", "33.75", "42.58", "44.53"),
    ("Idefics2-8B", "50.87", "41.69", "46.87", "52.73"),
    ("Mantis-8B", "46.65", "43.67", "41.80", "47.66"),
    ("Qwen-VL-12B", "32.26", "27.54", "48.83", "42.97"),
    ("Yi-VL-6B", "-", "-", "49.61", "41.41"),
    ("Yi-VL-34B", "-", "-", "52.73", "48.05"),
    ("GPT-4V", "78.92", "69.23", "63.67", "60.16"),
    ("GPT-4o", "86.35", "80.64", "72.66", "67.97"),
]
_TEXTQA_ZH = [  # (model, best accuracy %, prompt)
    ("Phi-3-medium", 41.28, 1), ("Mistral-7B-instruct", 35.18, 1), ("Llama3-8B-Chinese", 47.38, 1),
    ("YI-6B", 25.53, 3), ("YI-34B", 46.38, 3), ("Qwen2-7B-instruct", 68.23, 3), ("GPT-4", 60.99, 1),
]


def _rows() -> dict:  # task -> lang -> [{model, accuracy, mark, note}], best first
    out = {"textqa": {"zh": [dict(model=name, accuracy=acc, mark="", note=f"prompt {prompt}")
                             for name, acc, prompt in _TEXTQA_ZH]}}
    for name, *cells in _VQA:
        for (task, lang), cell in zip((c.split("/") for c in VQA_COLUMNS), cells):
            if cell != "-":
                out.setdefault(task, {}).setdefault(lang, []).append(
                    dict(model=name, accuracy=float(cell.rstrip("†")), mark="†" * cell.endswith("†"), note=""))
    return {task: {lang: sorted(rows, key=lambda r: -r["accuracy"]) for lang, rows in by_lang.items()}
            for task, by_lang in out.items()}


PUBLISHED = _rows()
