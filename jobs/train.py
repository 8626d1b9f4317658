"""python jobs/train.py [--config jobs/studies/demo.yaml] [section.key=value ...]

One training run of a study's config as it is (no search): the local debug path, on a laptop CPU
or a GPU box. It goes through the same Tune -> Train -> MLflow path as jobs/tune.py, as one trial.
"""
from fracture import cli, study


def main() -> None:
    cli.setup_logging()
    cfg, _ = cli.parse(description=__doc__)
    with cli.user_errors():
        study.preflight(cfg)                # bad data / weights / MLflow URI fail before Ray starts
        cli.init_ray(cfg)
        study.print_summary(study.run(cfg, search_space=False))


if __name__ == "__main__":
    main()
