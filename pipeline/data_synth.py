"""`pipeline data synth`: the built-in synthetic shapes dataset, written where the user asks."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError


def run_data_synth(
    out: Path, num_train: int, num_val: int, seed: int, label_noise: float, overwrite: bool
) -> str:
    """Write the dataset into `out` (refusing an existing one unless `overwrite`); the CLI's
    one-line summary."""
    from train.data.synthetic import generate_synthetic_dataset

    if (out / "annotations").exists() and not overwrite:
        raise PipelineError(f"{out}: already holds a dataset; pass --overwrite to replace it")
    try:
        root = generate_synthetic_dataset(
            out, num_train=num_train, num_val=num_val, seed=seed, label_noise=label_noise
        )
    except OSError as exc:
        raise PipelineError(
            f"{out}: cannot write the dataset there ({exc.strerror or exc})"
        ) from exc
    return f"wrote {num_train} train + {num_val} val images to {root}"
