"""python jobs/predict.py [--model CKPT_DIR | models:/fracture@champion] [--folder IMAGES | --split test] [--out FILE.csv] [--explain K] [section.key=value ...]

Batch prediction with Ray Data: one row per usable image (image_id, probability, predicted at the
checkpoint's threshold) into a CSV (default <storage_path>/<name>/predict.csv). --folder takes a
FracAtlas-layout folder or any folder of .jpg/.png images; --explain K writes Grad-CAM overlays and
a grid for the K most confident + K random images beside the CSV (<out>_gradcam/).
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
        frame = evaluate.frame_for(cfg, args.split or evaluate.DEFAULT_SPLIT, args.folder)
        cli.init_ray(cfg, verbose=args.verbose)
        preds = predict.predict_paths(ckpt, frame)
        out = (args.out or cfg.run_dir / "predict.csv").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        preds.to_csv(out, index=False)
        print(f"wrote {out}: {len(preds)} images, {int(preds[predict.PREDICTED].sum())} predicted fractured")
        if args.explain > 0:
            net, state = checkpoint.load_model(ckpt)
            result = evaluate.explain_images(
                net,
                frame,
                preds[predict.PROBABILITY],
                evaluate.image_size(state),
                args.folder or cfg.data.root,
                out.with_name(f"{out.stem}_gradcam"),
                args.explain,
                allow_truncated=cfg.data.allow_truncated,
            )
            print(f"Grad-CAM: {result['grid']}\n{evaluate.pointing_summary(result)}")


if __name__ == "__main__":
    main()
