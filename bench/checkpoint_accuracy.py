"""Held-out SIVQA accuracy of a training checkpoint, without converting it first (bench/tiny_learning_seeds.sh).

    from checkpoint_accuracy import checkpoint_accuracy     # with bench/ on sys.path
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from foodie.checkpoints import is_complete_checkpoint
from foodie.model_spec import ModelSpec
from foodie.training import TrainingFailed, _load_config


def load_training_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """The trainable weights (LoRA + projector) of an XTuner checkpoint: a ``.pth`` file, or a DeepSpeed
    folder (``mp_rank_00_model_states.pt``'s ``module``)."""
    import torch

    checkpoint = Path(checkpoint)
    if not is_complete_checkpoint(checkpoint):
        raise TrainingFailed(f"{checkpoint} is not a complete checkpoint (truncated, or not a training checkpoint)")
    if checkpoint.is_dir():
        states = sorted(checkpoint.rglob("*mp_rank_00_model_states.pt"))
        return torch.load(states[0], map_location="cpu", weights_only=False)["module"]  # DeepSpeed's own format
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def checkpoint_accuracy(config: str | os.PathLike, checkpoint: str | os.PathLike | None, data_root, held_out, *,
                        model_path: str | os.PathLike | None = None, limit: int | None = None,
                        max_new_tokens: int = 32, progress: bool = False) -> dict:
    """Held-out SIVQA accuracy of a training checkpoint, without converting it first.

    Builds the config's model (``checkpoint=None``: the untrained model, LoRA adding zero), loads the
    checkpoint's LoRA + projector weights, and asks each held-out question through the model's own
    ``chat()`` (greedy), with the image tiled as in training (the config's ``max_dynamic_patch``).
    ``accuracy`` is the FoodieQA authors' score (``foodie.scoring``: the first capital A-D in the reply; a
    reply without one counts 1/4). Diagnostics beside it: ``option_text_accuracy`` (a standalone letter, else
    the option the reply names) and ``answer_text_accuracy`` (the option the reply's text names once a leading
    "X)" letter is cut off: does the model know the answer, whatever letter it wrote?). For the full report on
    a converted checkpoint use tools/eval_food.py.
    """
    import torch
    from transformers import AutoTokenizer
    from xtuner.registry import BUILDER

    from foodie.evaluation import build_questions
    from foodie.image_tiling import load_image
    from foodie.scoring import authors_letter, credit, option_text_reading

    cfg = _load_config(Path(config))
    if model_path is not None:
        cfg.model.model_path = str(model_path)
    model = BUILDER.build(cfg.model).eval()
    if checkpoint is not None:
        state = load_training_checkpoint(checkpoint)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise TrainingFailed(f"{checkpoint} has weights this config's model lacks: {unexpected[:5]} "
                                 f"(was it trained with another config or LoRA setting?)")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.model_path, trust_remote_code=True)
    spec = ModelSpec.from_checkpoint(cfg.model.model_path)
    tiles = cfg.train_dataloader.dataset.get("max_dynamic_patch") or spec.max_tiles
    questions, root = build_questions(data_root, tasks=["sivqa"], items=held_out, limit=limit)
    rows = []
    items = questions
    if progress:
        from tqdm import tqdm
        items = tqdm(questions, desc="held-out questions")
    with torch.no_grad():
        for q in items:
            pixel_values = load_image(Path(root) / q.images[0], input_size=spec.tile_size, max_num=tiles)
            pixel_values = pixel_values.to(model.model.dtype)
            reply = model.model.chat(tokenizer, pixel_values, q.prompt,
                                     dict(max_new_tokens=max_new_tokens, do_sample=False))
            pred = authors_letter(reply)
            rows.append(dict(question_id=q.question_id, answer=q.answer, pred=pred, credit=credit(pred, q.answer),
                             option_text=option_text_reading(reply, q.choices),
                             answer_text=option_text_reading(re.sub(r"^\s*[A-D]\)", "", reply), q.choices),
                             reply=reply))
    n = max(len(rows), 1)
    return dict(accuracy=sum(r["credit"] for r in rows) / n, correct=sum(r["pred"] == r["answer"] for r in rows),
                no_letter=sum(r["pred"] is None for r in rows), n=len(rows),
                option_text_accuracy=sum(r["option_text"] == r["answer"] for r in rows) / n,
                answer_text_accuracy=sum(r["answer_text"] == r["answer"] for r in rows) / n, rows=rows)
