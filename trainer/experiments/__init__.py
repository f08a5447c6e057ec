"""Experiments over many runs: sweeps into MLflow, their comparison, and the README sections.

- ``sweep`` (``python -m trainer.experiments.sweep``): the command; ``sweep_spec`` (a grid or a
  sweep file → groups of axes), ``sweep_grid`` (→ runs with names and tags), ``sweep_launch``
  (running them in sequence), ``sweep_slurm`` (one SLURM array task per run).
- ``compare`` (``python -m trainer.experiments.compare``): the command; ``compare_runs`` (runs read
  back from MLflow), ``compare_tables``, ``compare_plots`` (Pareto fronts, the rank law),
  ``compare_laws`` (the rank-quality law fit).
- ``statistics``: whether one configuration beats another on the same seeds and clips (a crossed
  seed × clip paired bootstrap), Holm's adjustment over several claims, and the verdict word.
- ``config_identity``: what makes two runs the same configuration, read by sweeps and comparisons.
- ``results_readme`` (``python -m trainer.experiments.results_readme``) and ``readme_markers``: the
  README's results section, spliced between its markers (the splice ``benchmarks.report`` uses too).

Nothing here imports the training loop: a run is started through ``train.py``'s entry point.
"""
