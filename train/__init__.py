"""Training: dataset -> trained checkpoint (torch). Imports common/ only.

FACE lists the modules the other stages may import (tests/common/test_architecture.py enforces
it): the options (`config`), the checkpoint format (`checkpoint`), what builds and runs a
training (`builders`, `trainer`, `resume`, `run_log`, `distributed`), the model with its anchors
and post-processing (`model`, `postprocess`), the PyTorch predictor (`predict`), the losses'
registry (`losses`), the splits a run trained on and the built-in dataset (`data.splits`,
`data.synthetic`, `data.coco`), pretraining (`pretrain`, `pretrain_config`), the papers'
analyses and the errors. The rest (assignment, the step, samplers, transforms...) is its own.
"""

FACE = (
    "builders", "checkpoint", "config", "data.coco", "data.splits", "data.synthetic",
    "distributed", "errors", "losses", "model", "paper_analyses", "postprocess", "predict",
    "pretrain", "pretrain_config", "resume", "run_log", "trainer",
)  # fmt: skip
