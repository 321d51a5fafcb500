"""Turn a FoodieQA folder into XTuner training data with an honest held-out split.

    python tools/process_food.py [--data-root DIR] [--out DIR] [--tasks sivqa,mivqa,textqa]
        [--lang zh|en|both] [--style letter|name|explain|tutorial] [--eval-ratio 0.2] [--seed 0]
        [--split-by image|dish] [--no-stratify] [--skip-bad] [--tokenizer MODEL_DIR]
        [--eval-only] [--accept-foodieqa-terms]

Defaults: --data-root work/foodieqa-synthetic (make it with tools/make_demo_data.py), --out
work/foodieqa-xtuner (what xtuner_configs/*food*.py read). Writes train.json (XTuner LLaVA format,
absolute image paths), held_out.json (the evaluation manifest), summary.json and summary.md (counts
per split, cuisine and question type; token budget per sample). Nothing in the held-out split is
trained on: no image (or, with --split-by dish, no dish) is in both. Outputs are written atomically.

Answer styles: letter (default: the option letter, then its text, "B) 粤菜" -- what the FoodieQA authors' parser
reads), name (the dish, then the chosen option by its text, "图中的菜是白切鸡。答案是粤菜。": no letter, so the
authors' parser guesses), explain (the letter answer plus a sentence naming the dish), tutorial (the tutorial's
"{choice}，图中的菜是{food_name}", for comparison). docs/TRAINING.md compares them under the authors' scoring.

FoodieQA's terms (foodie/terms.py): research only, no commercial use, EVALUATION ONLY -- not for training
models -- attribution, CC BY-NC-ND 4.0. A --data-root in the FoodieQA schema that is neither the synthetic set
nor a data set of tools/photos_to_foodieqa.py counts as the real FoodieQA: the terms are printed, and
training data is written only with --accept-foodieqa-terms (training needs the authors' permission);
--eval-only writes the evaluation manifest (every question in held_out.json, no train.json) without it.
Pointed at the folder `hf download` wrote, the step unpacks FoodieQA.zip there first (safely).
summary.json records the source (name, licence, terms, acknowledgement): training, merge and publish read it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foodie import cli  # noqa: E402
from foodie.data_conversion import LANG_CHOICES, SPLIT_BY, ConversionOptions, convert_foodieqa  # noqa: E402
from foodie.foodieqa import FoodieQAError  # noqa: E402
from foodie.image_tiling import tiling_of  # noqa: E402
from foodie.foodieqa_download import DownloadError, locate_data_root  # noqa: E402
from foodie.paths import demo_data_dir, work_dir  # noqa: E402
from foodie.prompts import ANSWER_STYLES  # noqa: E402
from foodie.tasks import TASKS, parse_tasks  # noqa: E402
from foodie.terms import ACCEPT_FLAG, FOODIEQA, TermsNotAccepted, check_training_allowed, describe_source, terms_text  # noqa: E402


def default_out() -> Path:
    return work_dir() / "foodieqa-xtuner"


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data-root", type=Path, default=demo_data_dir(), help="FoodieQA folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=default_out(), help="output folder (default: %(default)s)")
    ap.add_argument("--tasks", type=parse_tasks, default=("sivqa",),
                    help=f"comma list of {','.join(TASKS)} to train on (default: sivqa)")
    ap.add_argument("--lang", choices=LANG_CHOICES, default="zh", help="question language (default: %(default)s)")
    ap.add_argument("--style", choices=ANSWER_STYLES, default="letter", help="answer style (default: %(default)s)")
    ap.add_argument("--eval-ratio", type=float, default=0.2, help="share held out (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    ap.add_argument("--split-by", choices=SPLIT_BY, default="image", help="unit of the split (default: %(default)s)")
    ap.add_argument("--no-stratify", action="store_true", help="do not stratify the split by cuisine")
    ap.add_argument("--mivqa-eval-share", type=float, default=0.5,
                    help="share of the held-out images filled with whole multi-image questions (default: %(default)s)")
    ap.add_argument("--skip-bad", action="store_true", help="drop bad items (reported in summary.md) instead of failing")
    ap.add_argument("--no-image-check", action="store_true", help="skip decoding every image (faster, less safe)")
    ap.add_argument("--max-length", type=int, default=8192, help="flag samples longer than this (default: %(default)s)")
    ap.add_argument("--max-tiles", type=int, default=12, help="tiles per image for the token budget (default: %(default)s)")
    ap.add_argument("--tokenizer", type=Path, help="model folder whose tokenizer and tile size "
                    "(config.json) count tokens exactly and size the multi-image collages")
    ap.add_argument("--workers", type=int, default=2, help="threads for image checks (default: %(default)s)")
    ap.add_argument("--eval-only", action="store_true",
                    help="evaluation manifest only: every question held out, no train.json (no terms flag needed)")
    ap.add_argument(ACCEPT_FLAG, dest="accept_terms", action="store_true",
                    help="write training data from the real FoodieQA, whose terms allow evaluation only: only with "
                         "the authors' permission")
    args = ap.parse_args(argv)
    try:
        args.data_root = locate_data_root(args.data_root, unpack=True)
        source = describe_source(args.data_root, terms_accepted=args.accept_terms)
        if source["kind"] == FOODIEQA and args.data_root.is_dir():  # a missing folder: load_foodieqa says so
            print(terms_text(), flush=True)
            if not args.eval_only:
                check_training_allowed(args.data_root, args.accept_terms)
    except (DownloadError, TermsNotAccepted) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {args.data_root}: {e.strerror or e}", file=sys.stderr)
        return 2

    opts = ConversionOptions(tasks=args.tasks, lang=args.lang, style=args.style, eval_ratio=args.eval_ratio,
                             seed=args.seed, split_by=args.split_by, stratify=not args.no_stratify,
                             mivqa_eval_share=args.mivqa_eval_share, skip_bad=args.skip_bad,
                             check_images=not args.no_image_check, max_length=args.max_length,
                             max_tiles=args.max_tiles, workers=args.workers)
    tokenizer = None
    if args.tokenizer:
        try:  # the config first: it names what is wrong with the folder, AutoTokenizer would not
            opts.tile_size, opts.image_tokens_per_tile = tiling_of(args.tokenizer)
        except ValueError as e:
            print(f"error: --tokenizer: {e}", file=sys.stderr)
            return 2
        from transformers import AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer), trust_remote_code=True)
        except Exception as e:  # noqa: BLE001 - missing or damaged tokenizer files raise many kinds
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            print(f"error: --tokenizer {args.tokenizer}: its tokenizer files cannot be loaded ({reason}); point it "
                  f"at an intact InternVL2 checkpoint folder (tokenizer_config.json, tokenizer.model)", file=sys.stderr)
            return 2
    from tqdm import tqdm
    start = time.perf_counter()
    try:
        opts.validate()
        result = convert_foodieqa(args.data_root, args.out, opts, tokenizer=tokenizer, source=source,
                                  eval_only=args.eval_only,
                                  progress=lambda it, desc, total: tqdm(it, desc=desc, total=total, leave=False))
    except FoodieQAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = result.summary
    print(f"wrote {result.out} in {time.perf_counter() - start:.1f} s")
    for task, c in s["items"].items():
        print(f"  {task}: {c['train']} train, {c['held_out']} held out, {c['dropped_straddling']} dropped (images in both splits)")
    tk = s["tokens_per_sample"]
    print(f"  {result.train_samples} training samples; tokens per sample median {tk['all'].get('median')}, "
          f"max {tk['all'].get('max')} -> suggested max_length {tk['suggested_max_length']}"
          + (f"; {tk['over_max_length']} over {tk['max_length']}!" if tk["over_max_length"] else ""))
    if s["skipped_bad_items"]:
        print(f"  skipped {len(s['skipped_bad_items'])} problem(s) in bad items: see {result.out / 'summary.md'}")
    print(f"  source: {source['name']} (licence: {source['licence']})"
          + ("; training on it was acknowledged with " + ACCEPT_FLAG if source.get("terms_accepted") else ""))
    if not args.eval_only:
        print(f"  train: {result.out / 'train.json'}")
    print(f"  {'evaluation' if args.eval_only else 'held-out'} manifest: {result.out / 'held_out.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
