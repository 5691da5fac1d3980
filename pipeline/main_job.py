"""`pipeline run`: the demo's main job, end to end on one dataset."""

from __future__ import annotations

import logging

from deploy.eval_report import format_metrics_table, write_json_atomic
from pipeline.evaluation import eval_in_run
from pipeline.exporting import run_export
from pipeline.training import run_training
from train.config import TrainConfig
from train.distributed import is_main_process
from train.resume import resume_config

log = logging.getLogger(__name__)


def run_main_job(config: TrainConfig) -> str:
    """Train, export, evaluate both formats on the same images; return the side-by-side table."""
    if config.resume is not None:  # the stored run's data and settings, not the command line's
        config = resume_config(config)
    result = run_training(config)
    if not is_main_process():  # a torchrun rank > 0: rank 0 exports and evaluates
        return ""
    onnx_path = result.out / "model.onnx"
    # no --data: parity images come from the split files the run validated on (its checkpoint)
    log.info(run_export(result.best_path, onnx_path, None, overwrite=True))
    rows = []
    for name, path in (("pytorch", result.best_path), ("onnxruntime", onnx_path)):
        rows.append((name, eval_in_run(name, path, config)))
    summary = {name: report for name, report in rows}
    write_json_atomic(result.out / "report.json", summary)
    return format_metrics_table(rows)
