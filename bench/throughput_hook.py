"""MMEngine hook for bench/train_throughput.py: one JSON line per training iteration.

Each line: wall seconds since the previous iteration ended (data wait included), samples, real and padded
tokens, per-sample lengths and tiles, labelled tokens, loss, and the CUDA peaks (max allocated and max
reserved) seen so far. The peaks are read every iteration, before MMEngine's LoggerHook (lower priority)
resets them at its logging interval, and kept as a running maximum.
"""
from __future__ import annotations

import json
import time

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook


class ThroughputHook(Hook):
    priority = "NORMAL"  # before LoggerHook (BELOW_NORMAL), which resets the CUDA peak counters

    def __init__(self, out_file: str, profile_iter: int | None = None, profile_file: str | None = None):
        self.out_file = out_file
        self.profile_iter, self.profile_file = profile_iter, profile_file
        self._profiler = None
        self._last = None
        self._peak_alloc = self._peak_reserved = 0

    def before_train(self, runner) -> None:
        if is_main_process():
            open(self.out_file, "w").close()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._last = time.perf_counter()

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self.profile_iter is not None and runner.iter == self.profile_iter and is_main_process():
            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self._profiler.__enter__()

    def _finish_profile(self) -> None:
        self._profiler.__exit__(None, None, None)
        table = self._profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60)
        cpu = self._profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
        with open(self.profile_file, "w") as f:
            f.write(table + "\n" + cpu)
        self._profiler = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        profiled = self._profiler is not None
        if profiled:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._finish_profile()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self._peak_alloc = max(self._peak_alloc, torch.cuda.max_memory_allocated())
            self._peak_reserved = max(self._peak_reserved, torch.cuda.max_memory_reserved())
        now = time.perf_counter()
        wall, self._last = now - self._last, now
        if not is_main_process():
            return
        data = data_batch["data"]
        mask, labels, pixels = data["attention_mask"], data["labels"], data["pixel_values"]
        tiles = [int(x.shape[0]) for x in pixels] if isinstance(pixels, (list, tuple)) else \
            [int(pixels.shape[1])] * int(pixels.shape[0])
        loss = (outputs or {}).get("loss")
        record = dict(
            iter=runner.iter, wall_s=wall, profiled=profiled, samples=int(mask.shape[0]), tokens=int(mask.sum()),
            padded_tokens=int(mask.numel()), lengths=[int(n) for n in mask.sum(-1)], tiles=tiles,
            labelled=int((labels[:, 1:] != -100).sum()),
            loss=None if loss is None else float(loss),
            max_allocated=self._peak_alloc, max_reserved=self._peak_reserved)
        with open(self.out_file, "a") as f:
            f.write(json.dumps(record) + "\n")
