"""python jobs/train.py [--config jobs/studies/demo.yaml] [section.key=value ...] [--verbose]

One training run of a study's config as it is (no search): the local debug path, on a laptop CPU
or a GPU box. It goes through the same Tune -> Train -> MLflow path as jobs/tune.py, as one trial.
"""

from fracture import cli


def main() -> None:
    cfg, args = cli.parse(description=__doc__)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        from fracture import study  # after parsing: --help must not wait for torch and Ray to import

        study.preflight(cfg)  # bad data / weights / MLflow URI fail before Ray starts
        cli.init_ray(cfg, verbose=args.verbose)
        study.print_summary(study.run(cfg, search_space=False, verbose=args.verbose))


if __name__ == "__main__":
    main()
