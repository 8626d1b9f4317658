"""python jobs/predict.py [--model CKPT_DIR | models:/fracture@champion] [--folder IMAGES | --split test] [--out FILE.csv] [--explain K] [section.key=value ...]

Batch prediction with Ray Data: one row per readable image (image_id, probability, predicted at the
checkpoint's threshold) into a CSV (default <storage_path>/<name>/predict.csv), and skipped.csv
(path, reason) beside it for every file that could not be scored; exits 2 when none could be.
--folder takes a FracAtlas-layout folder or any folder of .jpg/.png/.tif images; --explain K writes
Grad-CAM overlays and a grid for the K most confident + K random images beside the CSV (<out>_gradcam/).
"""

from fracture import cli
from fracture.runtime import cluster


def main() -> None:
    p = cli.scoring_flags(
        cli.parser(__doc__),
        split_help="manifest split when no --folder (default: test)",
        folder_help="images to score (FracAtlas layout, or any folder of images)",
        out_help="CSV to write (default: <storage_path>/<name>/predict.csv)",
    )
    cfg, args = cli.parse(p=p)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        # after parsing: --help must not wait for torch and Ray
        from fracture.evaluate import gradcam_examples, holdout, model_source, predict, scoring
        from fracture.model import checkpoint

        ckpt = model_source.checkpoint_dir(args.model or model_source.champion_uri(cfg), cfg)
        frame, left_out = scoring.select_rows(cfg, args.split or holdout.DEFAULT_SPLIT, args.folder, labelled=False)
        cluster.init_ray(cfg, verbose=args.verbose)
        preds, unreadable = predict.predict_paths(ckpt, frame, allow_truncated=cfg.data.allow_truncated)
        out = (args.out or cfg.run_dir / "predict.csv").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        skipped_csv = out.with_name(scoring.SKIPPED_FILE)
        skipped = scoring.write_skipped(skipped_csv, left_out, unreadable, scored=len(preds))
        preds.to_csv(out, index=False)
        print(f"wrote {out}: {len(preds)} images, {int(preds[predict.PREDICTED].sum())} predicted fractured")
        for line in scoring.skipped_lines(skipped, skipped_csv, scored=len(preds)):
            print(line)
        if args.explain > 0:
            net, state = checkpoint.load_model(ckpt)
            scored = frame.merge(preds, on=predict.ID)  # the rows that decoded, in order, with their scores
            result = gradcam_examples.explain_images(
                net,
                scored,
                scored[predict.PROBABILITY],
                checkpoint.image_size(state),
                args.folder or cfg.data.root,
                out.with_name(f"{out.stem}_gradcam"),
                args.explain,
                allow_truncated=cfg.data.allow_truncated,
            )
            print(f"Grad-CAM: {result['grid']}\n{gradcam_examples.pointing_summary(result)}")


if __name__ == "__main__":
    main()
