#!/usr/bin/env python
"""Publish a merged InternVL2 checkpoint to the Hugging Face Hub or ModelScope with a model card.

    python tools/publish.py --model work/merged --repo-id you/InternVL2-2B-FoodieQA --hub hf --dry-run

Checks the name ("InternVL"), the folder and FoodieQA's terms before anything leaves the machine, writes README.md
(the card), lists the files, uploads with the hub's own client (token from HF_TOKEN / MODELSCOPE_API_TOKEN or the
hub's login, never printed). --dry-run stops before the upload; a re-run continues an interrupted one.
"""
from __future__ import annotations

import argparse
import sys

from rich.console import Console

from foodie import cli
from foodie.publish import ACK_FLAG, EXTRA_FLAG, HUBS, OLD_ACK_FLAG, PublishError, publish


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="merged checkpoint folder (tools/convert_to_official.py)")
    parser.add_argument("--repo-id", required=True, help='OWNER/NAME; NAME must contain "InternVL"')
    parser.add_argument("--hub", required=True, choices=HUBS)
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", action="store_true", help="check, write the card, list the files; upload nothing")
    parser.add_argument("--eval-report", help="tools/eval_food.py's report (.md) or metrics (.json) for the card")
    parser.add_argument(ACK_FLAG, OLD_ACK_FLAG, dest="accept_licence", action="store_true",
                        help="acknowledge FoodieQA's terms (research only, non-commercial, evaluation only; CC "
                             "BY-NC-ND 4.0): needed for a model trained on it, not one trained on your own photos")
    parser.add_argument(EXTRA_FLAG, dest="allow_extra", action="store_true",
                        help="also upload files that are no part of a checkpoint (refused by default, listed)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        result = publish(args.model, args.repo_id, args.hub, private=args.private, dry_run=args.dry_run,
                         eval_report=args.eval_report, accept_foodieqa_licence=args.accept_licence, console=console,
                         allow_extra=args.allow_extra)
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
