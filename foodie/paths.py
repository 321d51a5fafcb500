"""Where the embedded default (tiny model, synthetic data) and run outputs live: ``work/`` in the repository root,
or ``$FOODIE_WORK``."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def work_dir() -> Path:
    return Path(os.environ.get("FOODIE_WORK", REPO_ROOT / "work")).resolve()


def tiny_model_dir() -> Path:  # the embedded tiny InternVL2 checkpoint (official format)
    return work_dir() / "tiny-internvl2"


def demo_data_dir() -> Path:  # the embedded synthetic FoodieQA folder (official schema)
    return work_dir() / "foodieqa-synthetic"


def cache_dir() -> Path:  # results worth keeping across work folders (the tiny LLM's reading pre-training)
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "internvl-foodie"
    return Path(os.environ.get("FOODIE_CACHE", default)).resolve()
