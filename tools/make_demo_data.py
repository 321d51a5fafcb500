"""Write the synthetic FoodieQA (the embedded default data set) to a folder, atomically; the same seed gives
byte-identical files. Default folder: work/foodieqa-synthetic.

    python tools/make_demo_data.py [--out DIR] [--seed N] [--force]
           [--photos-per-dish N] [--dishes N] [--mivqa-per-dish N] [--no-textqa]
"""
import argparse
import sys
import time
from pathlib import Path

from foodie import cli
from foodie.paths import demo_data_dir
from foodie.synthetic_data import DISHES, PHOTOS_PER_DISH, QUESTION_TYPES, make_demo_data


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=demo_data_dir(), help="output folder (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    ap.add_argument("--photos-per-dish", type=int, default=PHOTOS_PER_DISH, help="drawn photos per dish (default: %(default)s)")
    ap.add_argument("--dishes", type=int, default=len(DISHES), help="number of dishes, 4-%(default)s")
    ap.add_argument("--questions-per-photo", type=int, default=2, help="single-image questions per photo, each of "
                    f"another type, 1-{len(QUESTION_TYPES)} (default: %(default)s)")
    ap.add_argument("--mivqa-per-dish", type=int, default=10, help="multi-image questions per dish (default: %(default)s)")
    ap.add_argument("--no-textqa", action="store_true", help="do not write textqa_tidy.json")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = make_demo_data(args.out, seed=args.seed, force=args.force, progress=True,
                                photos_per_dish=args.photos_per_dish, num_dishes=args.dishes,
                                questions_per_photo=args.questions_per_photo, mivqa_per_dish=args.mivqa_per_dish,
                                textqa=not args.no_textqa)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if counts.get("reused"):
        print(f"{args.out} already holds this synthetic FoodieQA (seed {args.seed}); nothing to do (--force rebuilds it)")
        return 0
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {counts['dishes']} dishes, "
          f"{counts['cuisines']} cuisines, {counts['images']} images, {counts['sivqa']} single-image, "
          f"{counts['mivqa']} multi-image, {counts['textqa']} text questions")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
