#!/usr/bin/env python
"""Measure FoodieQA accuracy of InternVL2 checkpoints before/after fine-tuning (see foodie/evaluation.py).

    python tools/eval_food.py --model BASE --model TUNED --label base --label tuned \\
        --data-root /path/FoodieQA --items work/held_out.json --out work/eval
    python tools/eval_food.py --model BASE --data-root /path/FoodieQA --out work/eval-full --template 1

Scored as FoodieQA's authors score (foodie/scoring.py); without --items every question of every task the folder
has (sivqa, mivqa, textqa): the full test set the published numbers use.
"""
import sys

from foodie import cli
from foodie.evaluation import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
