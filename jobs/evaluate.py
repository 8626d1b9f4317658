"""python jobs/evaluate.py [--model CKPT_DIR | models:/fracture@champion] [--split test | --folder DATA_ROOT] [--out DIR] [--explain K] [section.key=value ...]

Score a checkpoint or registered model on the study's held-out test split (or any FracAtlas-layout
folder) at its stored threshold: print the report (95% CIs, body-part and implant slices), write
metrics.json, predictions.csv, skipped.csv (path, reason for every file that could not be scored)
and ROC / PR / confusion / calibration plots (default <storage_path>/<name>/evaluate), Grad-CAM
overlays with --explain K, and log all of it to MLflow. Exits 2 when no image could be scored.
"""

from fracture import cli
from fracture.core import redact


def main() -> None:
    p = cli.scoring_flags(
        cli.parser(__doc__),
        split_help="manifest split to score (default: test)",
        folder_help="score every usable image of this FracAtlas-layout folder instead",
        out_help="output directory (default: <storage_path>/<name>/evaluate)",
    )
    cfg, args = cli.parse(p=p)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        # after parsing: --help must not wait for torch and MLflow
        from fracture.evaluate import holdout, model_source, scoring
        from fracture.track import store, study_runs

        uri = store.tracking_uri(cfg)
        store.check_reachable(uri)  # before scoring: the run is logged after it
        split = args.split or holdout.DEFAULT_SPLIT
        source = args.model or model_source.champion_uri(cfg)
        net, state = model_source.load(source, cfg)
        frame, skipped = scoring.select_rows(cfg, split, args.folder)
        where = f"folder-{args.folder.resolve().name}" if args.folder else split
        out = (args.out or cfg.run_dir / "evaluate").resolve()
        report, files = holdout.run(
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
        print(holdout.format_table(report))
        for line in scoring.skipped_lines(report["skipped"], out / scoring.SKIPPED_FILE, scored=report["images"]):
            print(line)
        run_id = study_runs.log_evaluation(
            cfg,
            f"evaluate-{where}",
            holdout.flat_metrics(report),
            files,
            base_dir=out,
            params={"model": state["resolved"], "model_requested": source, "data": str(args.folder or split)},
            tags={"fracture.evaluation": where},
        )
        print(f"\nwrote {out} ({len(files)} files); MLflow run {run_id} in {redact.redact(uri)}")


if __name__ == "__main__":
    main()
