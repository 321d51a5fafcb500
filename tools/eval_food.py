#!/usr/bin/env python
"""Measure FoodieQA accuracy of InternVL2 checkpoints before/after fine-tuning, scored as its authors score
(foodie/evaluation.py, foodie/scoring.py); without --items: every question of every task, the full test set.

    python tools/eval_food.py --model BASE --model TUNED --label base --label tuned \\
        --data-root /path/FoodieQA --items work/held_out.json --out work/eval
"""
import sys

from foodie import cli
from foodie.evaluation import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
