"""Build the embedded tiny InternVL2 checkpoint (official format, random weights; its LLM then learns to answer a
multiple-choice question by letter, foodie/tiny_reader.py), or the full-size one (random weights).

    python tools/make_tiny_model.py                      # -> work/tiny-internvl2 (a few MB; ~5 CPU minutes once)
    python tools/make_tiny_model.py --out DIR --seed 1 --force
    python tools/make_tiny_model.py --full-size --device cuda --out DIR   # InternVL2-2B shape, 4.4 GB
    python tools/make_tiny_model.py --full-size --device meta             # list parameter names and shapes
"""
import argparse
import math
import sys
import time
from pathlib import Path

from foodie import cli, paths
from foodie.tiny_model import parameter_shapes, write_checkpoint


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=paths.tiny_model_dir(), help='output folder (default %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='weights are a pure function of this seed')
    parser.add_argument('--full-size', action='store_true', help='the real InternVL2-2B architecture (2.2 B params)')
    parser.add_argument('--device', default='cpu', help="cpu | cuda | meta (meta: list names and shapes only)")
    parser.add_argument('--force', action='store_true', help='replace an existing non-empty --out')
    parser.add_argument('--no-reading-pretraining', dest='reader', action='store_false',
                        help='leave the tiny LLM as drawn (default: it first learns to answer multiple choice by '
                             'letter, foodie/tiny_reader.py; a few CPU minutes once, then cached)')
    args = parser.parse_args(argv)
    shapes = parameter_shapes(full_size=args.full_size)
    params = sum(math.prod(s) for s in shapes.values())
    if args.device == 'meta':
        width = max(len(n) for n in shapes)
        print('\n'.join(f'{name:<{width}}  {list(shape)}' for name, shape in shapes.items()))
        print(f'{len(shapes)} tensors, {params:,} parameters')
        return 0
    start = time.perf_counter()
    try:
        write_checkpoint(args.out, seed=args.seed, full_size=args.full_size, device=args.device, force=args.force,
                         reader=args.reader, progress=True)
    except (FileExistsError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f'wrote {args.out}: {params:,} parameters, official modeling files, '
          f'{size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
