"""How a FoodieQA answer is scored: the authors' rule, in one place (``authors_letter``).

The authors (lyan62/FoodieQA, ``model-eval/scripts/get_accuracy.py``) read a response by the **first ASCII capital
A-D anywhere in it** (``re.findall(r'[A-D]', response)[0]``: "Based on..." reads as B; "b" or a full-width "Ｂ" is no
letter); a response without one gets a random guess, expected credit 1/4. Their script crashes on its image paths, so
the rule is re-implemented. Beside the headline: the seeded guess (that guess made repeatable), strict (no letter =
wrong) and ``option_text_reading``, a diagnostic of what the model meant (the authors do not read option text).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Sequence

from foodie.tasks import LETTERS, NUM_CHOICES

NO_LETTER_CREDIT = 1 / NUM_CHOICES  # expected value of the authors' random guess among the options
PROTOCOL = ("FoodieQA authors' protocol: first capital A-D anywhere in the response; a response without one "
            "counts 1/4 (the expected value of their random guess)")  # the rule in words, for reports
GUESS_SEED = 0

_FIRST_CAPITAL = re.compile(r"[A-D]")  # the authors' pattern: ASCII capitals only, inside words too


def authors_letter(response) -> int | None:
    """Option index (0-3) of the first ASCII capital A-D anywhere in the response; None if it has none."""
    m = _FIRST_CAPITAL.search(response) if isinstance(response, str) else None
    return None if m is None else LETTERS.index(m.group())


def credit(letter: int | None, answer: int) -> float:
    """Score of one answer by the authors' protocol: 1 right letter, 0 wrong letter, 1/4 no letter."""
    return NO_LETTER_CREDIT if letter is None else float(letter == answer)


def seeded_guess(question_key: str, seed: int = GUESS_SEED) -> int:
    """The random guess for a response without a letter: fixed per (seed, question), uniform over 0-3."""
    return hashlib.sha256(f"{seed}:{question_key}".encode()).digest()[0] % len(LETTERS)


def read_response(response: str, answer: int, question_key: str, choices: Sequence[str] | None) -> dict:
    """The fields a predictions row records beside the raw response: gold ``answer`` letter, ``letter`` (the
    authors' rule; None = none), ``score`` (1, 0 or 1/4), ``guess`` (seeded, when no letter), ``option_text``."""
    letter, reading = authors_letter(response), option_text_reading(response, choices)
    return dict(answer=LETTERS[answer], letter=None if letter is None else LETTERS[letter],
                score=credit(letter, answer), guess=LETTERS[seeded_guess(question_key)] if letter is None else None,
                option_text=None if reading is None else LETTERS[reading])


def guessed_right(row: dict) -> bool:
    """Right by the letter, or by the seeded guess where there is none (whole right answers)."""
    return (row["letter"] or row["guess"]) == row["answer"]


def accuracy(rows: Sequence[dict]) -> dict:
    """The headline ``accuracy`` (mean score) of read rows, with seeded-guess, strict and option-text figures."""
    from foodie.stats import wilson_interval

    n, per = len(rows), max(len(rows), 1)  # no rows: every figure 0
    score = sum(r["score"] for r in rows)
    letter_right = sum(r["letter"] == r["answer"] for r in rows)
    guessed = sum(map(guessed_right, rows))
    read_right = sum(r["option_text"] == r["answer"] for r in rows)
    return dict(n=n, accuracy=score / per, score=score, ci95=list(wilson_interval(score, n)),
                letter_right=letter_right, no_letter=sum(r["letter"] is None for r in rows),
                seeded_guess=dict(accuracy=guessed / per, correct=guessed, seed=GUESS_SEED),
                strict=dict(accuracy=letter_right / per, correct=letter_right,
                            ci95=list(wilson_interval(letter_right, n))),
                option_text=dict(accuracy=read_right / per, correct=read_right,
                                 unread=sum(r["option_text"] is None for r in rows)))


# Diagnostic only: the option-text reading.
_UPPER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
# A lone lower-case letter only at the start, before punctuation or the end ("b.", "(c) ..."; not "a dish").
_LOWER_START = re.compile(r"^[\s(\[{（【<「『\"'“‘]*([a-d])\s*(?:$|[)\]}）】>」』.:,;!?。．、:：，；！？\"'”’])")
# Where a reply states its conclusion ("...。答案是粤菜。"): option text after it is searched first.
_ANSWER_MARKER = re.compile(r"答案[是为：:]|the answer is", re.IGNORECASE)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def option_text_reading(response, choices: Sequence[str] | None = None) -> int | None:
    """The option (0-3) a free-text answer seems to mean, or None (a diagnostic): the first capital A-D standing
    alone ("答案是（B）", "（Ｃ）"), a lone lower-case letter at the start ("b."), else the one choice whose text the
    answer names, not as part of a longer named choice, searching after the last "答案是"/"the answer is" first."""
    text = unicodedata.normalize("NFKC", response).strip() if isinstance(response, str) else ""
    m = _UPPER.search(text) or _LOWER_START.search(text)
    if m:
        return LETTERS.index(m.group(1).upper())
    marked = [m.end() for m in _ANSWER_MARKER.finditer(text)]
    after = _choice_in_text(text[marked[-1]:], choices) if marked else None
    return after if after is not None else _choice_in_text(text, choices)


def _choice_in_text(text: str, choices: Sequence[str] | None) -> int | None:
    haystack = _normalise(text)
    hits = {i: _normalise(c).strip() for i, c in enumerate(choices or []) if isinstance(c, str)}
    hits = {i: c for i, c in hits.items() if c and c in haystack}
    # Drop a hit that is only part of a longer hit ("鸭" inside "北京烤鸭").
    hits = {i: c for i, c in hits.items() if not any(c != d and c in d for d in hits.values())}
    return min(hits) if len(set(hits.values())) == 1 else None
