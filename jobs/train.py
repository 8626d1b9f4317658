"""python jobs/train.py [--config jobs/studies/demo.yaml] [section.key=value ...] [--overwrite] [--verbose]

One training run of a study's config as it is (no search): the local debug path, on a laptop CPU
or a GPU box. It goes through the same Tune -> Train -> MLflow path as jobs/tune.py, as one trial.
Like a study, it refuses a name= an earlier run holds unless --overwrite is given.
"""

from fracture import cli
from fracture.runtime import cluster


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier study of the same name (its Tune and Train runs)"
    )
    cfg, args = cli.parse(p=p)
    cli.setup_logging(verbose=args.verbose)
    with cli.user_errors():
        from fracture import study

        study.preflight(cfg, overwrite=args.overwrite)  # bad data / weights / MLflow URI / a taken name: before Ray
        cluster.init_ray(cfg, verbose=args.verbose)
        study.print_summary(study.run(cfg, search_space=False, verbose=args.verbose))


if __name__ == "__main__":
    main()
