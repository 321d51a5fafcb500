"""Turn your own dish photos into a data set in the FoodieQA schema, to train a food expert you may share.

PHOTOS holds one subfolder of photos per dish (麻婆豆腐/1.jpg, 麻婆豆腐/2.jpg, 白切鸡/1.jpg, ...) and optionally
dishes.csv, one row per dish (columns folder, dish, cuisine, region, main_ingredient, cooking_method in Chinese,
the same with _en in English; see foodie/own_photos.py). Writes images/, sivqa_tidy.json, mivqa_tidy.json
(four dishes or more) and own_photos_manifest.json (where each photo came from), all or nothing. Then:

    python tools/process_food.py --data-root work/my-photos-dataset --out work/my-photos-xtuner
    make quickstart TRAIN_DATA=work/my-photos-dataset          # train on yours, evaluate on DATA
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foodie import cli
from foodie.own_photos import PhotosError, build_dataset
from foodie.paths import work_dir


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("photos", type=Path, help="folder with one subfolder of photos per dish")
    ap.add_argument("--out", type=Path, default=work_dir() / "my-photos-dataset", help="default: %(default)s")
    ap.add_argument("--questions-per-photo", type=int, default=2, help="each of another type (default: %(default)s)")
    ap.add_argument("--mivqa-per-dish", type=int, default=5, help="multi-image questions (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="question and option order (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace an --out that this tool did not write")
    args = ap.parse_args(argv)
    try:
        counts = build_dataset(args.photos, args.out, seed=args.seed, questions_per_photo=args.questions_per_photo,
                               mivqa_per_dish=args.mivqa_per_dish, force=args.force)
    except PhotosError as e:
        print("\n".join(f"error: {problem}" for problem in e.problems), file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    print(f"wrote {args.out}: {counts['dishes']} dishes, {counts['images']} photos, {counts['sivqa']} single-image"
          f" and {counts['mivqa']} multi-image questions")
    print(f"next: python tools/process_food.py --data-root {args.out} --out {args.out}-xtuner")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
