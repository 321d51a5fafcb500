"""foodie.scoring: the FoodieQA authors' reading of a response, their no-letter credit, the seeded guess,
and the option-text diagnostic."""
from __future__ import annotations

from collections import Counter

import pytest

from foodie.scoring import NO_LETTER_CREDIT, authors_letter, credit, option_text_reading, seeded_guess

A, B, C, D = range(4)

# The authors' verdict for each response (lyan62/FoodieQA model-eval/scripts/get_accuracy.py: the first
# ASCII capital A-D anywhere in the response; none -> a random guess).
AUTHORS_VERDICTS = [
    ("B", B),
    ("C) 川菜", C),
    ("答案是（B）", B),
    ("Based on the picture, the answer is C.", B),  # the B of "Based": a letter inside a word counts
    ("Answer: C", A),  # the A of "Answer"
    ("Dish B", D),  # the D of "Dish"
    ("The answer is C because it is red.", C),  # no capital A-D before the C
    ("I think D", D),  # "I" is not A-D
    ("A, not B", A),  # the first letter, not the last
    ("选C，不是D", C),
    ("图B", B),  # multi-image answers name an image letter
    ("b", None),  # lower case is no letter
    ("(c) something", None),
    ("（Ｂ）宫保鸡丁", None),  # full-width Ｂ (U+FF22) is not the ASCII capital their pattern matches
    ("图中的菜是麻婆豆腐。答案是麻婆豆腐。", None),  # the option named by its text: no letter
    ("", None),
    ("E F G", None),
]


@pytest.mark.parametrize("response, letter", AUTHORS_VERDICTS)
def test_authors_letter_gives_the_authors_verdict(response, letter):
    assert authors_letter(response) == letter


def test_the_first_letter_decides_not_the_last():
    for response in ("A then B", "B or C", "C, not D", "D (not A)"):
        assert authors_letter(response) == "ABCD".index(response[0])


def test_non_text_is_no_letter():
    assert authors_letter(None) is None and authors_letter(3) is None


def test_credit_right_wrong_and_no_letter():
    assert credit(B, B) == 1.0 and credit(A, B) == 0.0
    assert credit(None, B) == NO_LETTER_CREDIT == 0.25
    # A response without a letter is worth 1/4 whatever the right answer is.
    assert {credit(None, gold) for gold in range(4)} == {0.25}


def test_seeded_guess_is_fixed_per_question_and_uniform():
    assert seeded_guess("sivqa:1") == seeded_guess("sivqa:1")
    assert seeded_guess("sivqa:1", seed=0) in range(4)
    counts = Counter(seeded_guess(f"sivqa:{i}") for i in range(4000))
    assert set(counts) == {0, 1, 2, 3} and all(900 <= c <= 1100 for c in counts.values())
    # Another seed gives other guesses (not all the same as seed 0's).
    assert sum(seeded_guess(f"q{i}", 0) != seeded_guess(f"q{i}", 1) for i in range(100)) > 50


# --- the diagnostic: what the answer names ------------------------------------------------------

CHOICES = ["北京烤鸭", "宫保鸡丁", "烤鸭", "Mapo tofu"]


@pytest.mark.parametrize("response, expected", [
    ("答案是（B）", 1),
    ("b.", 1),
    ("The answer is C because the dish is red.", 2),
    ("选项D", 3),
    ("（Ｃ）宫保鸡丁", 2),  # full-width letter and brackets
    ("Answer: A", 0),  # the A of "Answer" is part of a word; the lone A is the answer
    ("宫保鸡丁", 1),  # choice text only
    ("我觉得是北京烤鸭。", 0),  # 烤鸭 is also a choice, but only as part of 北京烤鸭
    ("mapo TOFU, I think", 3),  # case-insensitive choice text
    ("", None),
    ("我不知道", None),
    ("a dish of noodles", None),  # an English article is not option a
    ("宫保鸡丁还是Mapo tofu？", None),  # two different choices named: cannot tell
    ("图中的菜是北京烤鸭。答案是宫保鸡丁。", 1),  # the text after the answer marker decides
    ("答案是宫保鸡丁还是Mapo tofu？", None),
])
def test_option_text_reading(response, expected):
    assert option_text_reading(response, CHOICES) == expected


def test_option_text_reading_and_the_authors_rule_differ_where_the_issue_says():
    """A name-style answer is read by the diagnostic and is no letter for the authors; "Based" is B for
    them and no standalone letter for the diagnostic."""
    assert option_text_reading("图中的菜是北京烤鸭。答案是宫保鸡丁。", CHOICES) == 1
    assert authors_letter("图中的菜是北京烤鸭。答案是宫保鸡丁。") is None
    assert authors_letter("Based on it: 宫保鸡丁") == B and option_text_reading("Based on it: 烤鸭", CHOICES) == 2
