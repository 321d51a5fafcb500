#!/usr/bin/env python
"""Publish a merged InternVL2 checkpoint to the Hugging Face Hub or ModelScope with a model card (docs/guide_gpu.md
section 9). The name, the folder and FoodieQA's terms are checked before anything leaves the machine; the token
(HF_TOKEN / MODELSCOPE_API_TOKEN or the hub's login) is never printed; a re-run continues an interrupted upload.

    python tools/publish.py --model work/merged --repo-id you/InternVL2-2B-FoodieQA --hub hf --dry-run
"""
from __future__ import annotations

import argparse
import sys

from rich.console import Console

from foodie import cli
from foodie.publish import ACK_FLAG, EXTRA_FLAG, HUBS, OLD_ACK_FLAG, PublishError, publish


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", dest="model_dir", required=True, help="merged checkpoint folder (convert_to_official)")
    ap.add_argument("--repo-id", required=True, help='OWNER/NAME; NAME must contain "InternVL"')
    ap.add_argument("--hub", required=True, choices=HUBS)
    ap.add_argument("--private", action="store_true", help="create the repository as private")
    ap.add_argument("--dry-run", action="store_true", help="check, write the card, list the files; upload nothing")
    ap.add_argument("--eval-report", help="tools/eval_food.py's report (.md) or metrics (.json) for the card")
    ap.add_argument(ACK_FLAG, OLD_ACK_FLAG, dest="accept_foodieqa_licence", action="store_true",
                    help="acknowledge FoodieQA's terms (research only, non-commercial, evaluation only; CC BY-NC-ND "
                         "4.0): needed for a model trained on it, not one trained on your own photos")
    ap.add_argument(EXTRA_FLAG, dest="allow_extra", action="store_true",
                    help="also upload files that are no part of a checkpoint (refused by default, listed)")
    console = Console()
    try:
        result = publish(**vars(ap.parse_args(argv)), console=console)
    except PublishError as e:
        print(f"Not published: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted. Re-run the same command to continue the upload.", file=sys.stderr)
        return 130
    if result.url:
        console.print(f"[bold green]Published[/] {result.url}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
