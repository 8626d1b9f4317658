"""python jobs/tune.py [--config jobs/studies/demo.yaml] [section.key=value ...] [--resume STUDY_DIR]

Search dropout, L2 and the head/backbone learning rates of a study with Optuna + ASHA on Ray Tune,
log every trial to MLflow and register the best checkpoint (alias @champion if it wins).
On a cluster: ray job submit --working-dir . -- python jobs/tune.py --config jobs/studies/fracatlas.yaml
"""
from pathlib import Path

from fracture import cli, study


def main() -> None:
    cli.setup_logging()
    p = cli.parser(__doc__)
    p.add_argument("--resume", type=Path, default=None, help="continue an interrupted study (its runs/<name> dir)")
    cfg, args = cli.parse(p=p)
    with cli.user_errors():
        study.preflight(cfg)                # bad data / weights / MLflow URI fail before Ray starts
        cli.init_ray(cfg)
        study.print_summary(study.run(cfg, resume=args.resume))


if __name__ == "__main__":
    main()
