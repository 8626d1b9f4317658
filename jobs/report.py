"""python jobs/report.py [--model models:/fracture@champion] [--split test] [--out DIR] [--explain K] [section.key=value ...]

Write the model card of a registered model version: model_card.html (one self-contained file) and
model_card.md, from its MLflow lineage (version -> trial run -> study run) and a fresh scoring of
the split (default <storage_path>/<name>/model_card); log both to the version's run under
model_card/ and tag the version with where they are.
"""

from datetime import datetime, timezone

from fracture import cli


def main() -> None:
    p = cli.scoring_flags(
        cli.parser(__doc__),
        split_help="manifest split to score (default: test)",
        folder_help="not supported: a model card reports on a split of the study's manifest",
        out_help="output directory (default: <storage_path>/<name>/model_card)",
    )
    p.set_defaults(explain=2)  # a few Grad-CAM examples: a card should show some
    cfg, args = cli.parse(p=p)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        from fracture.core.config import ConfigError
        from fracture.data import manifest, pipeline
        from fracture.evaluate import holdout, model_source, scoring
        from fracture.report import facts, render
        from fracture.track import lineage, store

        if args.folder:
            raise ConfigError("--folder: a model card reports on a split of the study's manifest; use --split")
        uri = store.tracking_uri(cfg)
        store.check_reachable(uri)
        net, state = model_source.load(args.model or model_source.champion_uri(cfg), cfg)
        out = (args.out or cfg.run_dir / "model_card").resolve()
        version = lineage.lineage(uri, state["resolved"], out / "lineage")  # a directory is refused here
        split = args.split or holdout.DEFAULT_SPLIT
        frame, skipped = scoring.select_rows(cfg, split)
        report, _ = holdout.run(
            net, state, frame, out / "scored", skipped=skipped, explain_k=args.explain,
            title=split, data_root=cfg.data.root, allow_truncated=cfg.data.allow_truncated,
        )  # fmt: skip
        card = facts.facts(
            lineage=version, state=state, report=report, manifest_df=manifest.load(pipeline.manifest_path(cfg)),
            split=split, scored_dir=out / "scored", generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )  # fmt: skip
        written = render.write(card, out)
        files = written + sorted(f for f in out.rglob("*") if f.is_file() and f not in written)
        where = lineage.log_model_card(uri, version["model_uri"], files, base_dir=out)
        print(f"wrote {written[0]} and {written[1].name}; logged to MLflow as {where}")


if __name__ == "__main__":
    main()
