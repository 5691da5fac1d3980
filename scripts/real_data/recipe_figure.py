"""One figure: validation AP against optimizer steps for focal and GHM under both recipes.

    python scripts/real_data/recipe_figure.py OURS_STUDY PAPER_STUDY OUT.png [--title TEXT]

OURS_STUDY and PAPER_STUDY are `pipeline compare` folders (runs/LOSS-sSEED/history.json, one
entry per validated epoch). Each curve is the mean over seeds, the band their range.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline.figures import new_figure, save  # noqa: E402

LOSSES = {"focal": "tab:blue", "ghm": "tab:red"}
RECIPES = {"ours": "-", "paper": "--"}


def _curves(study: Path, loss: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, AP per seed x epoch) of every finished seed of `loss`."""
    histories = [
        json.loads(p.read_text()) for p in sorted((study / "runs").glob(f"{loss}-s*/history.json"))
    ]
    histories = [h for h in histories if h]
    if not histories:
        return None
    epochs = min(len(h) for h in histories)
    steps = np.array([e["step"] for e in histories[0][:epochs]])
    return steps, np.array([[100 * e["AP"] for e in h[:epochs]] for h in histories])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ours", type=Path)
    parser.add_argument("paper", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    figure = new_figure(7.0, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    for recipe, study in (("ours", args.ours), ("paper", args.paper)):
        for loss, colour in LOSSES.items():
            found = _curves(study, loss)
            if found is None:
                continue
            steps, ap = found
            label = f"{loss}, recipe {recipe} ({len(ap)} seeds)"
            axes.plot(steps, ap.mean(0), RECIPES[recipe], color=colour, marker="o", label=label)
            axes.fill_between(steps, ap.min(0), ap.max(0), color=colour, alpha=0.12)
    axes.set_xlabel("optimizer steps (batch 8)")
    axes.set_ylabel("validation AP (points)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title(
        args.title or "AP while training: mean over seeds, band = their range", fontsize=10
    )
    save(figure, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
