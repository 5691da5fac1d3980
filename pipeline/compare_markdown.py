"""report.md from report.json: the tables, the effects with their intervals, and the caveats."""

from __future__ import annotations

from typing import Any

TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BUDGET_KEYS = (
    "data", "img_size", "epochs", "max_steps", "batch_size", "lr", "optimizer", "backbone",
    "fpn_channels", "head_convs", "amp", "device", "max_val_images",
)  # fmt: skip


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """'36.5 ± 0.4' (AP in points by default); '-' when there is no value."""
    if stat["mean"] is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['std'] * scale:.{digits}f}" if stat["std"] is not None else "")


def _signed(value: float, digits: int = 1) -> str:
    return f"{value * 100:+.{digits}f}"


def _results_table(report: dict[str, Any]) -> list[str]:
    backend = report["backend"]
    header = [
        "loss", "seeds", *TABLE_METRICS, "AP PyTorch", f"{backend} - PyTorch",
        f"p50 ms ({backend})", "train s", "train img/s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for loss, row in report["per_loss"].items():
        failed = f" ({len(row['failed'])} failed)" if row["failed"] else ""
        cells = [
            loss,
            f"{row['runs']}{failed}",
            *(_pm(row["engine"][m]) for m in TABLE_METRICS),
            _pm(row["pytorch_AP"]),
            _pm(row["engine_minus_pytorch_AP"], digits=2),
            _pm(row["latency_p50_ms"], scale=1.0, digits=2),
            _pm(row["train_seconds"], scale=1.0, digits=0),
            _pm(row["train_images_per_second"], scale=1.0, digits=1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict(effect: dict[str, Any]) -> str:
    low, high = effect["ci"]
    if low > 0:
        return "better than the baseline (interval above 0)"
    if high < 0:
        return "worse than the baseline (interval below 0)"
    return "no difference distinguishable from noise (interval contains 0)"


def _effects_table(report: dict[str, Any]) -> list[str]:
    baseline = report["baseline"]
    lines = [
        f"| loss | AP - AP({baseline}) | 95% interval | per seed | verdict |",
        "|---|---|---|---|---|",
    ]
    for loss, effect in report["effects"].items():
        if "error" in effect:
            lines.append(f"| {loss} | - | - | - | {effect['error']} |")
            continue
        low, high = effect["ci"]
        per_seed = ", ".join(_signed(d) for d in effect["per_seed_delta"])
        lines.append(
            f"| {loss} | {_signed(effect['delta'])} | [{_signed(low)}, {_signed(high)}] "
            f"| {per_seed} | {_verdict(effect)} |"
        )
    return lines


def _caveats(report: dict[str, Any]) -> list[str]:
    seeds = len(report["seeds"])
    training = report["training"]
    return [
        f"- {seeds} seed(s) per loss and {report['num_val_images']} validation images: the "
        "intervals cover the variation from these images and seeds only, not from other "
        "datasets, budgets or hyper-parameters.",
        f"- The training budget ({training['epochs']} epoch(s) at {training['img_size']} px"
        + (f", at most {training['max_steps']} steps" if training.get("max_steps") else "")
        + ") is far from the papers' 12 COCO epochs; a loss that converges more slowly can look "
        "worse here and better with a longer schedule.",
        "- Every loss runs with its papers' default options; none was tuned for this dataset.",
        "- Latency depends on this machine and on what else ran on it; training seconds count "
        "the training loop only (validation excluded).",
    ]


def format_markdown(report: dict[str, Any]) -> str:
    """The whole report.md."""
    training = report["training"]
    budget = ", ".join(f"{k} {training.get(k)}" for k in BUDGET_KEYS if k in training)
    env = report.get("environment", {})
    lines = [
        "# Loss comparison",
        "",
        f"Losses {', '.join(report['losses'])}; seeds {', '.join(map(str, report['seeds']))}; "
        f"deployed backend {report['backend']}; baseline {report['baseline']}.",
        f"Training: {budget}. Machine: {env.get('cpu', '?')} ({env.get('cpu_count', '?')} CPUs).",
        "",
        f"## Results on {report['backend']} (COCO AP in points, mean ± std over seeds)",
        "",
        *_results_table(report),
        "",
        "APs/APm/APl show '-' when the validation set has no object of that size.",
        "",
        f"## Effect against {report['baseline']}",
        "",
        *_effects_table(report),
        "",
        f"Method: {report['method']} Resamples: {report['resamples']}.",
        "",
        "## Plots",
        "",
        *(f"![{name}]({file})" for name, file in report["plots"].items()),
        "",
        "## What these numbers do and do not show",
        "",
        *_caveats(report),
        "",
    ]
    return "\n".join(lines)
