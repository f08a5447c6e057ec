"""``python -m trainer.evaluation --config X.yaml --checkpoint <output_dir>/adapter``: see ``cli``."""

from trainer.evaluation.cli import main

main()
