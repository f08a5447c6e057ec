"""The run: config, set-up, the DeepSpeed loop, checkpoints and resume, tracking, export.

Rooms: this package is one run (`trainer.Trainer` owns its mutable state); `trainer.evaluation`
evaluates an adapter (inside a run or on its own); `trainer.experiments` runs and compares many.
Arrows point one way: trainer → models, data; neither of those imports trainer.
"""
