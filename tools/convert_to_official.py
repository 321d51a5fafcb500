#!/usr/bin/env python
"""Merge a trained XTuner run into a standard InternVL2 checkpoint folder and verify it (docs/guide_gpu.md section 6).

    python tools/convert_to_official.py xtuner_configs/internvl_v2_tiny_lora_cpu.py latest work/merged-tiny

SAVE_DIR gets the merged safetensors, the base's config (+ the trained tile budget), code and tokenizer, and
foodie_provenance.json. Unless --no-verify, the folder is reloaded and its logits on a probe image and question
compared with the unmerged base + LoRA model.
"""
from __future__ import annotations

import argparse
import sys

from foodie import cli
from foodie.merge import DEFAULT_MAX_SHARD_SIZE, DTYPES, ConvertError, convert


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="XTuner config of the run")
    ap.add_argument("checkpoint", help="iter_N.pth (file or DeepSpeed folder), or `latest`")
    ap.add_argument("save_dir", help="output folder (refused if it exists, unless --force)")
    ap.add_argument("--force", action="store_true", help="replace an existing SAVE_DIR once the new one is complete")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip reloading and comparing logits")
    ap.add_argument("--tolerance", type=float, help="largest accepted |logit| difference (default: by dtype)")
    ap.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="saved dtype (auto: the base's)")
    ap.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest safetensors file (%(default)s)")
    ap.add_argument("--base-model", help="base checkpoint folder (default: the config's model_path / FOODIE_MODEL)")
    ap.add_argument("--work-dir", help="the run's work dir, for `latest` (default: the config's work_dir)")
    ap.add_argument("--allow-qlora", action="store_true", help="merge a QLoRA run's LoRA into the bf16 base weights")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="load a checkpoint that pickles more than tensors in full; only for your own files")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = vars(ap.parse_args(argv))
    if args.pop("no_progress"):
        from transformers.utils import logging

        logging.disable_progress_bar()
    try:
        result = convert(**args)
    except ConvertError as e:
        print(f"\n[convert] ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    c = result.counts
    print(f"[convert] wrote {result.save_dir}: {c['merged']} LoRA-merged weights, {c['replaced']} trained tensors, "
          f"{c['bytes'] / 1e9:.2f} GB in {len(c['files'])} safetensors file(s)\n[convert] files: "
          f"{', '.join(result.files)}\n[convert] time: {', '.join(f'{k} {v:.1f}s' for k, v in result.seconds.items())}")
    if result.verification is None:
        print("[convert] not verified (--no-verify)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
