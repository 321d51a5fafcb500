"""Training checkpoints that are either complete or absent, and finding the newest complete one.

MMEngine's ``CheckpointHook`` writes ``iter_N.pth`` and ``last_checkpoint`` in place and deletes the oldest kept
checkpoint first: a kill at the wrong moment leaves a truncated checkpoint that ``last_checkpoint`` names, or none.
``latest_complete_checkpoint`` never reads ``last_checkpoint``: it validates each candidate, newest first.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

from mmengine.dist import barrier, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from foodie.atomic import write_text

CKPT_NAME = re.compile(r"^iter_(\d+)\.pth$")
PARTIAL_SUFFIX = ".partial"


def _is_complete_torch_file(path: Path) -> bool:
    """A torch.save zip archive is complete when its central directory (written last) is readable."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _archives(path: Path) -> list[Path]:
    return sorted(path.rglob("*.pt")) if path.is_dir() else [path]  # a DeepSpeed folder holds ZeRO shards


def damaged_member(path: str | os.PathLike) -> str | None:
    """The first part of a checkpoint failing its CRC-32 check, else None. Reads every byte (slower than
    ``is_complete_checkpoint``): for checking before a checkpoint is trusted for good."""
    for archive in _archives(Path(path)):
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            return f"{archive}: {e}"
        if bad is not None:
            return f"{archive}: {bad} fails its CRC check"
    return None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A readable torch archive, or a DeepSpeed folder whose model-state and optimizer shards all are."""
    path = Path(path)
    shards = _archives(path) if path.exists() else []
    has_model = path.is_file() or any(s.name.endswith("model_states.pt") for s in shards)
    return has_model and all(_is_complete_torch_file(s) for s in shards)


def checkpoint_iter(path: str | os.PathLike) -> int | None:
    m = CKPT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """``iter_N.pth`` files/folders in ``work_dir``, oldest first (by N); partial ones excluded."""
    work_dir = Path(work_dir)
    found = [p for p in work_dir.iterdir() if checkpoint_iter(p) is not None] if work_dir.is_dir() else []
    return sorted(found, key=checkpoint_iter)


def latest_complete_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``work_dir`` that validates, or None. Never reads ``last_checkpoint``."""
    return next((p for p in reversed(list_checkpoints(work_dir)) if is_complete_checkpoint(p)), None)


# torch >= 2.6 loads with weights_only=True. MMEngine's message hub holds HistoryBuffers (they pickle bound
# methods: allow-listing `getattr` would defeat weights_only) and numpy scalars; the hook stores them as plain
# data and restores them on load, so resume and `torch.load` need no allow-list.
_BUFFER = "__history_buffer__"


def plain_message_hub(value):
    """MessageHub.state_dict() (or a part of it) with HistoryBuffers and numpy values as tensors / Python scalars."""
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    if isinstance(value, HistoryBuffer):
        log, count = value.data
        return {_BUFFER: True, "log": torch.as_tensor(log, dtype=torch.float64),
                "count": torch.as_tensor(count, dtype=torch.float64), "max_length": int(value.max_length)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: plain_message_hub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_message_hub(v) for v in value)
    return value


def restore_message_hub(hub: dict) -> dict:
    from mmengine.logging import HistoryBuffer

    return dict(hub, log_scalars={
        key: HistoryBuffer(buf["log"].tolist(), buf["count"].tolist(), buf["max_length"])
        if isinstance(buf, dict) and buf.get(_BUFFER) else buf
        for key, buf in hub.get("log_scalars", {}).items()})


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints appear only when complete, holding only tensors and plain values.

    Per save: write ``.iter_N.pth.partial`` -> barrier -> rename to ``iter_N.pth`` -> delete checkpoints beyond
    ``max_keep_ckpts`` -> atomically rewrite ``last_checkpoint``: at any kill point the previous complete
    checkpoints are still on disk. Files and DeepSpeed folders, on a local file system.
    """

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if isinstance(checkpoint.get("message_hub"), dict):
            checkpoint["message_hub"] = plain_message_hub(checkpoint["message_hub"])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if isinstance(checkpoint.get("message_hub"), dict):
            checkpoint["message_hub"] = restore_message_hub(checkpoint["message_hub"])

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and Path(self.out_dir).is_dir():
            for stale in Path(self.out_dir).glob(f".iter_*.pth{PARTIAL_SUFFIX}"):
                _remove(stale)

    def _save_checkpoint_with_step(self, runner, step, meta):
        name = self.filename_tmpl.format(step)
        final = Path(self.out_dir) / name
        partial = Path(self.out_dir) / f".{name}{PARTIAL_SUFFIX}"

        drop: list[int] = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                drop.append(self.keep_ckpt_ids[0])
            self.keep_ckpt_ids.append(step)  # deque(maxlen=max_keep_ckpts) drops the oldest id
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))

        self.last_ckpt = str(final)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)

        if is_main_process():
            _remove(partial)
        barrier()
        runner.save_checkpoint(
            self.out_dir, partial.name, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        barrier()  # every rank has written its shards
        if not is_main_process():
            return
        _remove(final)
        os.replace(partial, final)
        for old in drop:
            _remove(Path(self.out_dir) / self.filename_tmpl.format(old))
        write_text(Path(runner.work_dir) / "last_checkpoint", self.last_ckpt)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
