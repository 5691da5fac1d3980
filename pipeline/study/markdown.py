"""report.md from report.json: the tables, the effects with their intervals, and the caveats."""

from __future__ import annotations

from typing import Any

TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BUDGET_KEYS = (
    "data", "img_size", "epochs", "max_steps", "batch_size", "recipe", "lr", "optimizer", "backbone",
    "fpn_channels", "head_convs", "amp", "device", "max_val_images",
)  # fmt: skip


def _budget_value(key: str, value: Any) -> Any:
    """A setting as the report shows it: lr and optimizer left unset are the recipe's."""
    return "the recipe's" if value is None and key in ("lr", "optimizer") else value


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """'36.5 ± 0.4' (AP in points by default); '-' when there is no value."""
    if stat["mean"] is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['std'] * scale:.{digits}f}" if stat["std"] is not None else "")


def _signed(value: float, digits: int = 1) -> str:
    return f"{value * 100:+.{digits}f}"


def _engine_label(engine: str) -> str:
    return "PyTorch" if engine == "pytorch" else engine


def _learn_note(row: dict[str, Any]) -> str:
    silent = len(row["did_not_learn"])
    if not silent:
        return ""
    return " (did not learn)" if silent == row["runs"] else f" ({silent} did not learn)"


def _results_table(report: dict[str, Any]) -> list[str]:
    engines, primary = ["pytorch", *report["backends"]], report["primary_backend"]
    header = [
        "loss", "seeds", *(f"AP {_engine_label(e)}" for e in engines),
        *(f"{m} ({primary})" for m in TABLE_METRICS[1:]),
        "NMS candidates / image", "train s", "train img/s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for loss, row in report["per_loss"].items():
        failed = f" ({len(row['failed'])} failed)" if row["failed"] else ""
        cells = [
            loss + _learn_note(row),
            f"{row['runs']}{failed}",
            *(_pm(row["engines"][e]["metrics"]["AP"]) for e in engines),
            *(_pm(row["engines"][primary]["metrics"][m]) for m in TABLE_METRICS[1:]),
            _pm(row["nms_candidates_per_image"], scale=1.0, digits=0),
            _pm(row["train_seconds"], scale=1.0, digits=0),
            _pm(row["train_images_per_second"], scale=1.0, digits=1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(effect: dict[str, Any]) -> str:
    if effect.get("did_not_learn"):
        return "did not learn"
    if "error" in effect:
        return effect["error"]
    low, high = effect["ci"]
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "noise"


_VERDICT_WORDS = {
    "better": "better than the baseline (interval above 0)",
    "worse": "worse than the baseline (interval below 0)",
    "noise": "no difference distinguishable from noise (interval contains 0)",
}


def _interval(effect: dict[str, Any], digits: int = 1) -> str:
    low, high = effect["ci"]
    return f"{_signed(effect['delta'], digits)} [{_signed(low, digits)}, {_signed(high, digits)}]"


def _effects_table(report: dict[str, Any], engine: str) -> list[str]:
    baseline = report["baseline"]
    lines = [
        f"| loss | AP - AP({baseline}) [95% interval] | per seed | verdict |",
        "|---|---|---|---|",
    ]
    for loss, effect in report["effects"][engine].items():
        if "ci" not in effect:
            lines.append(f"| {loss} | - | - | {verdict(effect)} |")
            continue
        per_seed = ", ".join(_signed(d) for d in effect["per_seed_delta"])
        words = _VERDICT_WORDS[verdict(effect)]
        lines.append(f"| {loss} | {_interval(effect)} | {per_seed} | {words} |")
    return lines


def _reference_section(report: dict[str, Any]) -> list[str]:
    """Each loss's AP change from the reference study, and that change against the baseline's."""
    if "versus_reference" not in report:
        return []
    baseline = report["baseline"]
    lines = [
        f"## Against the reference study {report['reference']}",
        "",
        "Each loss's runs paired seed by seed with the reference study's runs of the same loss, "
        "on the same validation images: the AP change (points, 95% interval), and that change "
        f"minus {baseline}'s change (above 0: the loss lost less than {baseline}).",
        "",
    ]
    for engine, per_loss in report["versus_reference"].items():
        lines += [
            f"On {engine}:",
            "",
            f"| loss | AP change [95% interval] | change minus {baseline}'s [95% interval] |",
            "|---|---|---|",
        ]
        for loss, entry in per_loss.items():
            if "change" not in entry:
                lines.append(f"| {loss} | {entry.get('error', '-')} | - |")
                continue
            versus = entry.get("change_vs_baseline")
            lines.append(
                f"| {loss} | {_interval(entry['change'])} | "
                f"{_interval(versus) if versus else '-'} |"
            )
        lines.append("")
    return lines


def _deployment_table(report: dict[str, Any]) -> list[str]:
    engines = report["backends"]
    header = [
        "loss", *(f"{e} - PyTorch [95%]" for e in engines),
        *(f"p50 ms {_engine_label(e)}" for e in ["pytorch", *engines]),
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for loss, row in report["per_loss"].items():
        deltas = []
        for engine in engines:
            effect = report["deployment"][engine][loss]
            deltas.append(_interval(effect, digits=2) if "ci" in effect else "-")
        latencies = [
            _pm(row["engines"][e]["latency_p50_ms"], scale=1.0, digits=2)
            for e in ["pytorch", *engines]
        ]
        lines.append("| " + " | ".join([loss, *deltas, *latencies]) + " |")
    return lines


SCORE_COLUMNS = (0.05, 0.3, 0.5)  # thresholds shown in the scores table
FP_FROM = 0.3  # false positives per image are counted from this score up


def _ap_at(entry: dict[str, Any], threshold: float) -> str:
    curve = entry["ap_by_threshold"]
    if threshold not in curve["thresholds"] or not curve["mean"]:
        return "-"
    i = curve["thresholds"].index(threshold)
    return _pm({"mean": curve["mean"][i], "std": curve["std"][i]})


def _fp_from(histogram: dict[str, Any], low: float) -> float:
    """False positives per image in the bins starting at `low` or above."""
    lefts = histogram["edges"][:-1]
    return sum(
        n for left, n in zip(lefts, histogram["fp_per_image"], strict=True) if left >= low - 1e-9
    )


def _scores_section(report: dict[str, Any]) -> list[str]:
    """Per loss: where its scores sit, what a deployment threshold costs, the best-F1 point."""
    scores = report.get("scores")
    if not scores:
        return []
    primary = report["primary_backend"]
    header = [
        "loss", "median TP score", f"FP / image >= {FP_FROM}",
        *(f"AP at score >= {t}" for t in SCORE_COLUMNS), "best F1: threshold, F1 (P / R)",
    ]  # fmt: skip
    lines = [
        f"## Detection scores on {primary}",
        "",
        "True and false positives are matched at IoU 0.5 over all classes; AP at score >= t keeps "
        "only the detections scored at least t (mean ± std over seeds); the best-F1 threshold is "
        "the one a deployment would pick.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for loss, entry in scores.get(primary, {}).items():
        histogram, f1 = entry["histogram"], entry["best_f1"]
        median = histogram["tp_median_score"]
        cells = [
            loss,
            "-" if median is None else f"{median:.2f}",
            f"{_fp_from(histogram, FP_FROM):.2f}",
            *(_ap_at(entry, t) for t in SCORE_COLUMNS),
            "-" if f1 is None else (
                f"{f1['threshold']:.2f}, {100 * f1['f1']:.1f} "
                f"({100 * f1['precision']:.0f} / {100 * f1['recall']:.0f})"
            ),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    engines = [e for e in ["pytorch", *report["backends"]] if e in scores]
    threshold = SCORE_COLUMNS[-1]
    lines += [
        "",
        f"AP at score >= {threshold} on every engine (an engine that shifts scores moves "
        "detections across a deployment threshold):",
        "",
        "| loss | " + " | ".join(_engine_label(e) for e in engines) + " |",
        "|" + "---|" * (len(engines) + 1),
    ]
    for loss in scores.get(primary, {}):
        cells = [_ap_at(scores[e][loss], threshold) if loss in scores[e] else "-" for e in engines]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _provenance_section(report: dict[str, Any]) -> list[str]:
    """Each engine's version, precision, calibration and hardware, with how many runs had it."""
    provenance = report.get("provenance")
    if not provenance:
        return []
    lines = ["## Provenance", ""]
    for engine, counts in provenance.items():
        for line, runs in counts.items():
            lines.append(f"- {_engine_label(engine)}: {line} ({runs} run{'s' * (runs != 1)})")
    return [*lines, ""]


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


def _variant_lines(report: dict[str, Any]) -> list[str]:
    """'name: loss with k=v, ...' for each --variant (what a study name stands for)."""
    return [
        f"Variant {name}: {v['loss']} with "
        + ", ".join(f"{k}={value}" for k, value in v["options"].items())
        + "."
        for name, v in report.get("variants", {}).items()
    ]


def _candidates_meaning(training: dict[str, Any]) -> str:
    """What the NMS-candidates column counts for the study's detector."""
    if training.get("detector", "retinanet") == "faster-rcnn":
        return "(RoI, class) pairs above the score threshold that the final NMS ranks"
    return "(anchor, class) pairs above the score threshold after the per-level top-k"


def format_markdown(report: dict[str, Any]) -> str:
    """The whole report.md."""
    training = report["training"]
    budget = ", ".join(f"{k} {_budget_value(k, training[k])}" for k in BUDGET_KEYS if k in training)
    if training.get("detector", "retinanet") != "retinanet":
        budget = f"detector {training['detector']}, {budget}"
    env = report.get("environment", {})
    baseline = report["baseline"]
    effects = []
    for engine in report["backends"]:
        effects += [
            f"## Effect against {baseline} on {engine}",
            "",
            *_effects_table(report, engine),
        ]
        effects.append("")
    lines = [
        "# Loss comparison",
        "",
        f"Losses {', '.join(report['losses'])}; seeds {', '.join(map(str, report['seeds']))}; "
        f"engines PyTorch, {', '.join(report['backends'])}; baseline {baseline}.",
        *_variant_lines(report),
        f"Training: {budget}"
        + (f", backbone weights {training['pretrained']}" if training.get("pretrained") else "")
        + f". Machine: {env.get('cpu', '?')} ({env.get('cpu_count', '?')} CPUs).",
        "",
        "## Results (COCO AP in points, mean ± std over seeds)",
        "",
        *_results_table(report),
        "",
        "APs/APm/APl show '-' when the validation set has no object of that size. "
        f"NMS candidates: {_candidates_meaning(training)}, counted on the PyTorch model. A run "
        "whose PyTorch AP is under 0.1 points learned nothing and is marked 'did not learn' "
        "rather than ranked.",
        "",
        *effects,
        *_reference_section(report),
        "## The deployed engines: AP minus PyTorch's on the same weights, and latency",
        "",
        *_deployment_table(report),
        "",
        "Latency: median ms per image at batch 1, pre-processing excluded, decode and NMS "
        "included (they are inside the exported graph).",
        "",
        f"Method: {report['method']} Resamples: {report['resamples']}.",
        "",
        *_scores_section(report),
        *_provenance_section(report),
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


def format_summary(report: dict[str, Any]) -> str:
    """The terminal's table: AP per engine and the effect against the baseline on the first."""
    engines, primary = ["pytorch", *report["backends"]], report["primary_backend"]
    header = ["loss", *(f"AP {_engine_label(e)}" for e in engines)]
    header += [f"vs {report['baseline']} on {primary} [95%]", "verdict"]
    rows = [header]
    for loss, row in report["per_loss"].items():
        effect = report["effects"][primary].get(loss)
        if effect is None:
            compared, said = "(baseline)", "did not learn" if _learn_note(row) else ""
        else:
            compared, said = (_interval(effect) if "ci" in effect else "-"), verdict(effect)
        aps = [_pm(row["engines"][e]["metrics"]["AP"]) for e in engines]
        rows.append([loss, *aps, compared, said])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(["AP in points, mean ± std over seeds", *text])
