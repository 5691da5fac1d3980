"""One node's training processes in a multi-node Slurm run (started by torchrun on each node).

`python -m pipeline.study.node_train CONFIG.json`: the TrainConfig node 0 planned (resume or
start again), written as JSON where every node reads it (the study folder, on a shared file
system).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from common.logs import LOG_FORMAT
from pipeline.training import run_training
from train.resume import config_from_dict


def main(config_file: str) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    config = config_from_dict(json.loads(Path(config_file).read_text()))
    run_training(config)


if __name__ == "__main__":
    main(sys.argv[1])
