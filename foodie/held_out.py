"""The held-out manifest (``held_out.json`` of tools/process_food.py): the questions a model never trained on."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

FORMAT = "foodie-held-out"


def read_held_out(path: str | os.PathLike, tasks: Sequence[str] | None = None) -> dict[str, set[str]]:
    """Question ids per task from a held-out manifest written by ``foodie.data_conversion.convert_foodieqa``."""
    from foodie.tasks import TASKS

    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise ValueError(f"{path}: cannot read the held-out manifest ({e}); re-run tools/process_food.py") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a held-out manifest of tools/process_food.py (held_out.json)")
    return {t: set(manifest.get("question_ids", {}).get(t, [])) for t in (tasks or TASKS)}


def select(items: list, ids: set[str], manifest: str | os.PathLike, data_root, task: str) -> list:
    """The items the manifest names, in file order; an id missing from the data is an error naming the fix."""
    missing = sorted(ids - {it.question_id for it in items})
    if missing:
        raise ValueError(f"{manifest}: {len(missing)} {task} question id(s) not found in {data_root} (e.g. "
                         f"{', '.join(missing[:5])}): re-run tools/process_food.py on this data folder.")
    return [it for it in items if it.question_id in ids]
