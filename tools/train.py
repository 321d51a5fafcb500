#!/usr/bin/env python
"""Train with XTuner and fail loudly: `make train [CONFIG=...] [RESUME=1] [TRAIN_ARGS=...]`.

Prints the exact `xtuner train ...` command, runs it, and exits non-zero with the reason when training failed
(xtuner itself exits 0 on a crash). --resume continues from the newest *complete* checkpoint in the work dir.
Without --config it trains the embedded tiny model on the synthetic FoodieQA (built on first use). Arguments
after `--` go to `xtuner train` unchanged.

Examples:
  python tools/train.py                                   # embedded default, CPU
  python tools/train.py --resume                          # continue after a kill
  FOODIE_MODEL=/models/InternVL2-2B FOODIE_DATA=work/foodieqa-xtuner \\
    python tools/train.py --config xtuner_configs/internvl_v2_internlm2_2b_lora_finetune_food.py \\
      --deepspeed deepspeed_zero2
"""
from __future__ import annotations

import argparse
import sys

from foodie import cli
from foodie.training import DEFAULT_CONFIG, TrainingFailed, describe_checkpoint, plan_training, run_training


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="XTuner config (default: %(default)s)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    ap.add_argument("--work-dir", help="logs and checkpoints (default: the config's work_dir)")
    ap.add_argument("--deepspeed", help="e.g. deepspeed_zero2 (GPU)")
    ap.add_argument("--nproc", type=int, help="processes (GPUs) on this node; >1 runs torchrun")
    ap.add_argument("xtuner_args", nargs=argparse.REMAINDER, help="after --: passed to xtuner train")
    args = ap.parse_args(argv)
    extra = args.xtuner_args[1:] if args.xtuner_args[:1] == ["--"] else args.xtuner_args
    try:
        plan = plan_training(args.config, resume=args.resume, work_dir=args.work_dir,
                             deepspeed=args.deepspeed, extra_args=extra, nproc=args.nproc)
        if plan.finished is not None:
            print(f"[train] --resume: this run already finished; its final checkpoint is "
                  f"{describe_checkpoint(plan.finished)}. Nothing to resume. To train again, run without --resume "
                  f"or with another --work-dir.\n[train] merge it: python tools/convert_to_official.py "
                  f"{plan.config} {plan.finished} work/merged", flush=True)
            return 0
        if args.resume and plan.resume_from is None:
            print(f"[train] --resume: no complete checkpoint in {plan.work_dir}; starting from scratch", flush=True)
        final = run_training(plan)
    except TrainingFailed as e:
        print(f"\n[train] ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"\n[train] done. checkpoint: {describe_checkpoint(final)}")
    print(f"[train] work dir (logs, last_checkpoint): {plan.work_dir}")
    print(f"[train] next, merge it into a standard InternVL2 folder: python tools/convert_to_official.py "
          f"{plan.config} {final} work/merged --base-model {plan.model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
