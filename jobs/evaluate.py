"""python jobs/evaluate.py [--model CKPT_DIR | models:/fracture@champion] [--split test | --folder DATA_ROOT] [--out DIR] [--explain K] [section.key=value ...]

Score a checkpoint or registered model on the study's held-out test split (or any FracAtlas-layout
folder) at its stored threshold: print the report (95% CIs, body-part and implant slices), write
metrics.json, predictions.csv, skipped.csv (path, reason for every file that could not be scored)
and ROC / PR / confusion / calibration plots (default <storage_path>/<name>/evaluate), Grad-CAM
overlays with --explain K, and log all of it to MLflow. Exits 2 when no image could be scored.
"""

from pathlib import Path

from fracture import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--model", help="checkpoint dir or models:/<name>@<alias> (default: models:/fracture@champion)")
    p.add_argument("--split", help="manifest split to score (default: test)")
    p.add_argument("--folder", type=Path, help="score every usable image of this FracAtlas-layout folder instead")
    p.add_argument("--out", type=Path, help="output directory (default: <storage_path>/<name>/evaluate)")
    p.add_argument("--explain", type=int, default=0, metavar="K", help="Grad-CAM: K most confident + K random images")
    cfg, args = cli.parse(p=p)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        from fracture import evaluate, tracking  # after parsing: --help must not wait for torch and MLflow

        uri = tracking.tracking_uri(cfg)
        tracking.check_reachable(uri)  # before scoring: the run is logged after it
        split = args.split or evaluate.DEFAULT_SPLIT
        source = args.model or evaluate.champion_uri(cfg)
        net, state = evaluate.load(source, cfg)
        frame, skipped = evaluate.select_rows(cfg, split, args.folder)
        where = f"folder-{args.folder.resolve().name}" if args.folder else split
        out = (args.out or cfg.run_dir / "evaluate").resolve()
        report, files = evaluate.run(
            net,
            state,
            frame,
            out,
            skipped=skipped,
            explain_k=args.explain,
            title=where,
            data_root=args.folder or cfg.data.root,
            allow_truncated=cfg.data.allow_truncated,
        )
        print(evaluate.format_table(report))
        for line in evaluate.skipped_lines(report["skipped"], out / evaluate.SKIPPED_FILE, scored=report["images"]):
            print(line)
        run_id = tracking.log_evaluation(
            cfg,
            f"evaluate-{where}",
            evaluate.flat_metrics(report),
            files,
            base_dir=out,
            params={"model": state["resolved"], "model_requested": source, "data": str(args.folder or split)},
            tags={"fracture.evaluation": where},
        )
        print(f"\nwrote {out} ({len(files)} files); MLflow run {run_id} in {tracking.redact(uri)}")


if __name__ == "__main__":
    main()
