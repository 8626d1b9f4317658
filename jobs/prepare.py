"""python jobs/prepare.py --root ../shared/fracatlas [--config STUDY.yaml] [--out PATH] [section.key=value ...]

Audit a FracAtlas folder and write the leak-free manifest (Parquet) plus its data report (JSON +
Markdown beside it); print the report. --out defaults to data.manifest, else
<storage_path>/<name>/manifest.parquet, where jobs/train.py and jobs/tune.py look for it.
--download URL [--sha256 HEX] fetches and unpacks the dataset into the data root first;
--download fracatlas takes the FracAtlas release from figshare (its API gives the archive's URL
and MD5, checked) and logs the archive's sha256 to pin with --sha256 on later downloads.
"""

import logging
from pathlib import Path

from fracture import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--root", type=Path, help="FracAtlas folder (sets data.root)")
    p.add_argument("--out", type=Path, help="manifest path (sets data.manifest)")
    p.add_argument(
        "--download",
        metavar="URL",
        help="fetch the dataset archive first: https://, file://, or fracatlas (the figshare release)",
    )
    p.add_argument("--sha256", help="expected checksum of the archive")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # progress lines go to stderr
    cfg, args = cli.parse(p=p)
    with cli.user_errors():
        from fracture.data import datareport, download, pipeline

        cfg = cfg.replace(data={k: str(v.resolve()) for k, v in (("root", args.root), ("manifest", args.out)) if v})
        if args.download:
            cfg = cfg.replace(data={"root": str(download.fetch(args.download, cfg.data.root, sha256=args.sha256))})
        out = pipeline.manifest_path(cfg)
        try:
            pipeline.build_manifest(cfg, cfg.data.root, out)
        finally:  # a refused manifest's report says why
            report = datareport.paths(out)[1]
            if report.is_file():
                print(report.read_text())
    print(f"manifest: {out}")


if __name__ == "__main__":
    main()
