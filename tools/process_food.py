"""Turn a FoodieQA folder into XTuner training data with an honest held-out split.

Writes train.json (XTuner LLaVA format), held_out.json (the evaluation manifest), summary.json and summary.md into
--out (default work/foodieqa-xtuner, what xtuner_configs/*food*.py read), all at once; no held-out image (or dish)
is trained on (foodie/data_conversion.py). Answer styles: foodie/prompts.py (answer_text); the default, letter
("B) 粤菜"), starts with the letter the FoodieQA authors' parser reads; --option-orders N writes each training
question in N orders of its options.

FoodieQA's terms (foodie/terms.py) allow EVALUATION ONLY: a --data-root that is neither the synthetic set nor from
tools/photos_to_foodieqa.py is the real FoodieQA: its terms are printed, and training data is written only with
--accept-foodieqa-terms (the authors' permission); --eval-only writes the evaluation manifest alone. The folder
`hf download` wrote is unpacked first (FoodieQA.zip, safely).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foodie import cli
from foodie.data_conversion import LANG_CHOICES, MAX_OPTION_ORDERS, SPLIT_BY, ConversionOptions, convert_foodieqa
from foodie.foodieqa import locate_data_root
from foodie.model_spec import ModelSpec, SpecError
from foodie.paths import demo_data_dir, work_dir
from foodie.prompts import ANSWER_STYLES
from foodie.tasks import TASKS, parse_tasks
from foodie.terms import ACCEPT_FLAG, FOODIEQA, check_training_allowed, describe_source, terms_text


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data-root", type=Path, default=demo_data_dir(), help="FoodieQA folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=work_dir() / "foodieqa-xtuner", help="default: %(default)s")
    ap.add_argument("--tasks", type=parse_tasks, default=("sivqa",), help=f"of {','.join(TASKS)} (default: sivqa)")
    ap.add_argument("--lang", choices=LANG_CHOICES, default="zh", help="question language (default: %(default)s)")
    ap.add_argument("--style", choices=ANSWER_STYLES, default="letter", help="answer style (default: %(default)s)")
    ap.add_argument("--eval-ratio", type=float, default=0.2, help="share held out (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    ap.add_argument("--option-orders", type=int, default=1, metavar="N",
                    help=f"write each training question N times, its options in N different orders (the first its "
                         f"own; the answer letter moves with its option; 1-{MAX_OPTION_ORDERS}): the letter can then "
                         f"only be learned from where the answer stands. Held-out questions are never changed. "
                         f"(default: %(default)s; docs/TRAINING.md)")
    ap.add_argument("--split-by", choices=SPLIT_BY, default="image", help="unit of the split (default: %(default)s)")
    ap.add_argument("--skip-bad", action="store_true", help="drop bad items (listed in summary.md) instead of failing")
    ap.add_argument("--no-image-check", action="store_true", help="skip decoding every image (faster, less safe)")
    ap.add_argument("--tokenizer", type=Path, help="model folder: its tokenizer and tiling count the tokens")
    ap.add_argument("--eval-only", action="store_true", help="every question held out, no train.json (no terms flag)")
    ap.add_argument(ACCEPT_FLAG, dest="accept_terms", action="store_true",
                    help="write training data from the real FoodieQA (its terms: evaluation only): authors' permission")
    args = ap.parse_args(argv)
    opts = ConversionOptions(tasks=args.tasks, lang=args.lang, style=args.style, eval_ratio=args.eval_ratio,
                             seed=args.seed, split_by=args.split_by, skip_bad=args.skip_bad,
                             option_orders=args.option_orders,
                             check_images=not args.no_image_check)
    tokenizer = None
    try:
        args.data_root = locate_data_root(args.data_root, unpack=True)
        source = describe_source(args.data_root, terms_accepted=args.accept_terms)
        if source["kind"] == FOODIEQA and args.data_root.is_dir():  # a missing folder: load_foodieqa says so
            print(terms_text(), flush=True)
            if not args.eval_only:
                check_training_allowed(args.data_root, args.accept_terms)
        if args.tokenizer:  # the config first: it names what is wrong with the folder, AutoTokenizer would not
            spec = ModelSpec.from_checkpoint(args.tokenizer)
            opts.tile_size, opts.image_tokens_per_tile = spec.tile_size, spec.tokens_per_tile
            opts.min_tiles, opts.max_tiles = spec.min_tiles, spec.max_tiles
            from transformers import AutoTokenizer
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer), trust_remote_code=True)
            except Exception as e:  # noqa: BLE001 - missing or damaged tokenizer files raise many kinds
                raise SpecError(f"--tokenizer {args.tokenizer}: its tokenizer files cannot be loaded "
                                f"({' '.join(str(e).split())[:300] or type(e).__name__}); point it at an intact "
                                f"InternVL2 checkpoint folder (tokenizer_config.json, tokenizer.model)") from None
        s = convert_foodieqa(args.data_root, args.out, opts, tokenizer=tokenizer, source=source,
                             eval_only=args.eval_only)
    except ValueError as e:  # every bad-input error of the data step; OSErrors: cli.run
        print(f"error: {e}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    out, tk = args.out.expanduser().resolve(), s["tokens_per_sample"]
    print(f"wrote {out} (see summary.md)")
    for task, c in s["items"].items():
        print(f"  {task}: {c['train']} train, {c['held_out']} held out, {c['dropped_straddling']} dropped "
              f"(images in both splits)")
    print(f"  {s['train_samples']} training samples; tokens per sample median {tk['all'].get('median')}, "
          f"max {tk['all'].get('max')} -> suggested max_length {tk['suggested_max_length']}"
          + (f"; {tk['over_max_length']} over {tk['max_length']}!" if tk["over_max_length"] else "")
          + (f"; {len(s['skipped_bad_items'])} problem(s) in skipped bad items" if s["skipped_bad_items"] else ""))
    print(f"  source: {source['name']} (licence: {source['licence']})"
          + ("; training on it was acknowledged with " + ACCEPT_FLAG if source.get("terms_accepted") else ""))
    print(f"  {'evaluation' if args.eval_only else 'held-out'} manifest: {out / 'held_out.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
