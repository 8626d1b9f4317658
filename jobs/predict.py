"""python jobs/predict.py [--model CKPT_DIR | models:/fracture@champion] [--folder IMAGES | --split test] [--out FILE.csv] [--explain K] [section.key=value ...]

Batch prediction with Ray Data: one row per readable image (image_id, probability, predicted at the
checkpoint's threshold) into a CSV (default <storage_path>/<name>/predict.csv), and skipped.csv
(path, reason) beside it for every file that could not be scored; exits 2 when none could be.
--folder takes a FracAtlas-layout folder or any folder of .jpg/.png/.tif images; --explain K writes
Grad-CAM overlays and a grid for the K most confident + K random images beside the CSV (<out>_gradcam/).
"""

from pathlib import Path

from fracture import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--model", help="checkpoint dir or models:/<name>@<alias> (default: models:/fracture@champion)")
    p.add_argument("--split", help="manifest split when no --folder (default: test)")
    p.add_argument("--folder", type=Path, help="images to score (FracAtlas layout, or any folder of images)")
    p.add_argument("--out", type=Path, help="CSV to write (default: <storage_path>/<name>/predict.csv)")
    p.add_argument("--explain", type=int, default=0, metavar="K", help="Grad-CAM: K most confident + K random images")
    cfg, args = cli.parse(p=p)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        from fracture import checkpoint, evaluate, predict  # after parsing: --help must not wait for torch and Ray

        ckpt = evaluate.checkpoint_dir(args.model or evaluate.champion_uri(cfg), cfg)
        frame, left_out = evaluate.select_rows(cfg, args.split or evaluate.DEFAULT_SPLIT, args.folder, labelled=False)
        cli.init_ray(cfg, verbose=args.verbose)
        preds, unreadable = predict.predict_paths(ckpt, frame, allow_truncated=cfg.data.allow_truncated)
        out = (args.out or cfg.run_dir / "predict.csv").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        skipped_csv = out.with_name(evaluate.SKIPPED_FILE)
        skipped = evaluate.write_skipped(skipped_csv, left_out, unreadable, scored=len(preds))
        preds.to_csv(out, index=False)
        print(f"wrote {out}: {len(preds)} images, {int(preds[predict.PREDICTED].sum())} predicted fractured")
        for line in evaluate.skipped_lines(skipped, skipped_csv, scored=len(preds)):
            print(line)
        if args.explain > 0:
            net, state = checkpoint.load_model(ckpt)
            scored = frame.merge(preds, on=predict.ID)  # the rows that decoded, in order, with their scores
            result = evaluate.explain_images(
                net,
                scored,
                scored[predict.PROBABILITY],
                evaluate.image_size(state),
                args.folder or cfg.data.root,
                out.with_name(f"{out.stem}_gradcam"),
                args.explain,
                allow_truncated=cfg.data.allow_truncated,
            )
            print(f"Grad-CAM: {result['grid']}\n{evaluate.pointing_summary(result)}")


if __name__ == "__main__":
    main()
