"""How a FoodieQA answer is scored: the authors' rule, in one place.

The FoodieQA authors (lyan62/FoodieQA, ``model-eval/scripts/get_accuracy.py``) read a response by
the **first ASCII capital A-D anywhere in it** (``re.findall(r'[A-D]', response)[0]``): "Based on
the picture..." reads as B, "Answer: C" as A, a lower-case "b" or a full-width "Ｂ" is no letter. A
response with no such letter gets a random guess (``random.choice``), so its expected credit is 1/4.
Accuracy is taken over every question of the task. Their released script crashes on its single- and
multi-image paths (TypeError), so the rule is re-implemented here, not called.

Three readings of one response, every one from this module:

* ``authors_letter`` + ``credit``: the headline. A letter scores 1 or 0; no letter scores
  ``NO_LETTER_CREDIT`` (= 1/4, the expected value of the authors' guess).
* ``seeded_guess``: the authors' guess made concrete and repeatable (one fixed pseudo-random letter
  per question), for a figure of whole right answers beside the expected value.
* strict (no letter = wrong): ``authors_letter(r) == answer``.
* ``option_text_reading``: a diagnostic of what the model meant -- a standalone letter, else the
  option whose text the answer names. Never the headline: the authors do not read option text.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Sequence

LETTERS = "ABCD"
NO_LETTER_CREDIT = 0.25  # expected value of the authors' random guess among four options
GUESS_SEED = 0

_FIRST_CAPITAL = re.compile(r"[A-D]")  # the authors' pattern: ASCII capitals only, inside words too


def authors_letter(response) -> int | None:
    """Option index (0-3) of the first ASCII capital A-D anywhere in the response; None if it has none."""
    if not isinstance(response, str):
        return None
    m = _FIRST_CAPITAL.search(response)
    return None if m is None else LETTERS.index(m.group())


def credit(letter: int | None, answer: int) -> float:
    """Score of one answer by the authors' protocol: 1 right letter, 0 wrong letter, 1/4 no letter."""
    if letter is None:
        return NO_LETTER_CREDIT
    return 1.0 if letter == answer else 0.0


def seeded_guess(question_key: str, seed: int = GUESS_SEED) -> int:
    """The random guess for a response without a letter: fixed per (seed, question), uniform over 0-3."""
    return hashlib.sha256(f"{seed}:{question_key}".encode()).digest()[0] % len(LETTERS)


# ---------------------------------------------------------------------------------------------
# Diagnostic only: the option-text reading
# ---------------------------------------------------------------------------------------------

_UPPER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
# A lone lower-case letter counts only at the very start and followed by punctuation or the end
# ("b.", "(c) ...", "d"): "a dish of noodles" must not read as A.
_LOWER_START = re.compile(r"^[\s(\[{（【<「『\"'“‘]*([a-d])\s*(?:$|[)\]}）】>」』.:,;!?。．、:：，；！？\"'”’])")
# Where a reply states its conclusion ("...。答案是粤菜。"): option text after it is searched first.
_ANSWER_MARKER = re.compile(r"答案[是为：:]|the answer is", re.IGNORECASE)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def option_text_reading(response, choices: Sequence[str] | None = None) -> int | None:
    """The option (0-3) a free-text answer seems to mean, or None: a DIAGNOSTIC, not FoodieQA accuracy.

    1. The first capital letter A-D standing alone ("答案是（B）", "选项D", "The answer is C because",
       "图B", full-width "（Ｃ）"); a lone lower-case letter at the start ("b.", "(c)").
    2. Otherwise the choice whose text the answer contains ("北京烤鸭" -> the option reading 北京烤鸭);
       when several do, the one that is not part of a longer matching choice; still several: None.
       Text after the last answer marker ("答案是", "答案为", "the answer is") is searched first, so
       "图中的菜是猪肉炖粉条。答案是粉条。" picks 粉条, not 猪肉, though both are options.
    """
    if not isinstance(response, str):
        return None
    text = unicodedata.normalize("NFKC", response).strip()
    if not text:
        return None
    m = _UPPER.search(text)
    if m:
        return LETTERS.index(m.group(1))
    m = _LOWER_START.search(text)
    if m:
        return LETTERS.index(m.group(1).upper())
    if choices:
        marked = [m.end() for m in _ANSWER_MARKER.finditer(text)]
        for haystack in ([text[marked[-1]:]] if marked else []) + [text]:
            found = _choice_in_text(_normalise(haystack), choices)
            if found is not None:
                return found
    return None


def _choice_in_text(haystack: str, choices: Sequence[str]) -> int | None:
    hits = {i: _normalise(c).strip() for i, c in enumerate(choices) if isinstance(c, str)}
    hits = {i: c for i, c in hits.items() if c and c in haystack}
    # Drop a hit that is only part of a longer hit ("鸭" inside "北京烤鸭").
    hits = {i: c for i, c in hits.items() if not any(c != d and c in d for d in hits.values())}
    distinct = set(hits.values())
    return min(hits) if len(distinct) == 1 else None
