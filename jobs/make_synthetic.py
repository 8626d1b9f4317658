"""python jobs/make_synthetic.py [--out data/synthetic] [--n 400] [--seed 0]

Write a small synthetic dataset in FracAtlas' layout (images/, dataset.csv, annotations/yolo/)
for demos and tests: no real X-rays, a learnable "fracture" signal, the real class ratio.
"""

import argparse
import logging

from fracture import synthetic


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    synthetic.generate(args.out, n=args.n, seed=args.seed)


if __name__ == "__main__":
    main()
