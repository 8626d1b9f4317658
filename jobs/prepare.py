"""python jobs/prepare.py --root ../shared/fracatlas
Options: [--out PATH] [--config STUDY.yaml] [--download URL [--sha256 HEX]] [section.key=value ...]

Audit FracAtlas and write the leak-free manifest (Parquet) plus its data report; print the report.
--out defaults to data.manifest, else <storage_path>/<name>/manifest.parquet.
--download fetches and unpacks the dataset into the data root first (skipped when already there).
"""
import argparse
import logging
import sys
from pathlib import Path

from fracture import config, manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[3])
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    for flag in ("--config", "--root", "--out", "--download", "--sha256"):
        parser.add_argument(flag)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # progress lines go to stderr
    try:
        cfg = config.load(args.config, args.overrides)
        cfg = cfg.replace(data={"root": args.root}) if args.root else cfg
        d = cfg.data
        root = manifest.download(args.download, d.root, sha256=args.sha256) if args.download else d.root
        out = Path(args.out or d.manifest or cfg.run_dir / "manifest.parquet")
        manifest.build(root, out, seed=d.split_seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                       balanced=d.balanced, allow_truncated=d.allow_truncated)
    except (manifest.DataError, config.ConfigError) as exc:
        sys.exit(f"prepare: {exc}")     # one line, no traceback: these are the user's to fix
    print(manifest.report_paths(out)[1].read_text())


if __name__ == "__main__":
    main()
