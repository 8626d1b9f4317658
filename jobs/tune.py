"""python jobs/tune.py [--config STUDY.yaml] [section.key=value ...] [--resume DIR | --extend DIR | --overwrite] [--verbose]

Search dropout, L2 and the head/backbone learning rates of a study with Optuna + ASHA on Ray Tune,
log every trial to MLflow and register the best checkpoint (alias @champion if it wins).
On a cluster: ray job submit --working-dir . -- python jobs/tune.py --config jobs/studies/fracatlas.yaml

--resume STUDY_DIR continues an interrupted study with the config stored in it
(STUDY_DIR/config.yaml): `python jobs/tune.py --resume runs/demo` is enough; a study on remote
storage is named by its URI (--resume s3://bucket/runs/demo). --config and overrides
may be given with it only to repeat that config (the original command plus --resume works); one
that would change it is refused with an error naming the key (exit 2).

--extend STUDY_DIR adds search.num_trials more trials to a finished study (`python jobs/tune.py
--extend runs/demo search.num_trials=8`): a new Tune run whose Optuna sampler knows every earlier
trial (STUDY_DIR/optuna.db), logged under the study's MLflow parent run; the champion rule then
judges the new trials. Only search.num_trials, search.max_concurrent and cluster.max_failures may differ
from the study's config.

A study's name is its directory (<storage_path>/<name>): a new study refuses a name an earlier
study holds, whatever its config or data, and says how to go on (--resume, another name=, or
--overwrite, which removes the earlier study's Tune and Train runs; its MLflow runs stay).
"""

import argparse

from fracture import cli
from fracture.runtime import cluster


def parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    # Study dirs stay strings: Path would fold s3://bucket/x into s3:/bucket/x, a local path.
    p.add_argument(
        "--resume", default=None, help="continue an interrupted study (its <storage_path>/<name> dir or URI)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier study of the same name (its Tune and Train runs)"
    )
    p.add_argument("--extend", default=None, help="add search.num_trials trials to a finished study (dir or URI)")
    return p


def main() -> None:
    p = parser()
    # --resume / --extend run the study's stored config: its paths are checked, not the command line's.
    cfg, args = cli.parse(p=p, check_paths=False)
    if args.extend and (args.resume or args.overwrite):
        p.error("--extend goes alone: not with --resume or --overwrite")
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        from fracture import resume, study

        if args.resume:
            cfg = resume.resume_config(args.resume, config=args.config, overrides=args.overrides) or cfg
        if args.extend:
            cfg = resume.extend_config(args.extend, config=args.config, overrides=args.overrides)
        cli.check_job_paths(cfg)
        # bad data / weights / MLflow URI / a taken name: before Ray
        study.preflight(cfg, resume=args.resume or args.extend, overwrite=args.overwrite)
        cluster.init_ray(cfg, verbose=args.verbose)
        study.print_summary(study.run(cfg, resume=args.resume, extend=args.extend, verbose=args.verbose))


if __name__ == "__main__":
    main()
