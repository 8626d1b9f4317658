"""python jobs/make_synthetic.py [--out data/synthetic] [--n 400] [--seed 0] [--min-size 64] [--max-size 160]

Write a small synthetic dataset in FracAtlas' layout (images/, dataset.csv, annotations/yolo/)
for demos and tests: no real X-rays, a learnable "fracture" signal, the real class ratio.
"""

import argparse
import logging

from fracture.data import synthetic


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=64, help="smallest image side, px (FracAtlas: mostly 373-454)")
    p.add_argument("--max-size", type=int, default=160, help="largest image side, px")
    args = p.parse_args()
    synthetic.generate(args.out, n=args.n, seed=args.seed, min_size=args.min_size, max_size=args.max_size)


if __name__ == "__main__":
    main()
