"""`pipeline train`: build the trainer, attach validation, fit, and summarize."""

from __future__ import annotations

import logging

from deploy.metadata import ModelMetadata
from pipeline.validation import make_validator
from train.config import TrainConfig
from train.data.layout import resolve_split
from train.trainer import Trainer, TrainResult, data_root

log = logging.getLogger(__name__)


def run_training(config: TrainConfig) -> TrainResult:
    trainer = Trainer(config)
    val_ann, val_dir = resolve_split(data_root(config), "val")
    metadata = ModelMetadata(
        class_names=trainer.train_set.class_names,
        category_ids=trainer.train_set.category_ids,
        img_size=config.img_size,
        loss=config.loss,
    )
    trainer.validate = make_validator(
        val_ann, val_dir, metadata, config.max_val_images, str(trainer.device), config.strict
    )
    return trainer.fit()
