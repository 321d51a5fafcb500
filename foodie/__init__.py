"""internvl-foodie: fine-tune, evaluate, serve and publish InternVL2 on FoodieQA."""

__version__ = "0.1.0"
