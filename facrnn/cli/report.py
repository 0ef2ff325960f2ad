"""Plain-text summaries of metrics for the terminal."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Per-horizon curves (rollout_r2_k1 ... k20) stay in metrics.json; the terminal shows their summary.
PER_HORIZON = re.compile(r"_k\d+$")


def format_metrics(metrics: Mapping[str, float], title: str = "metrics", source: str = "metrics.json") -> str:
    """Two-column table of metric names and values, one per line, without per-horizon rows."""
    shown = {name: value for name, value in metrics.items() if not PER_HORIZON.search(name)}
    width = max([len(name) for name in shown] + [len(title)])
    rule = "-" * (width + 14)
    lines = [rule, f"{title:<{width}}  {'value':>12}", rule]
    lines += [f"{name:<{width}}  {value:>12.4f}" for name, value in shown.items()]
    lines.append(rule)
    hidden = len(metrics) - len(shown)
    if hidden:
        lines.append(f"(+{hidden} per-horizon values such as rollout_r2_k1 in {source})")
    return "\n".join(lines)


def evaluation_title(name: str, provenance: Mapping[str, Any]) -> str:
    """The heading of a metrics table: the method, the split scored and whether it was held
    out, the checkpoint and its epoch, e.g. ``facrnn: test split, held out (even_odd), best.ckpt
    epoch 4899`` or ``... train split, IN-SAMPLE (split=all: trained and scored on every bin)``."""
    if not provenance:
        return f"{name} metrics"
    split, protocol = provenance.get("split", "?"), provenance.get("split_protocol", "?")
    if protocol == "all":
        where = "IN-SAMPLE (datamodule.split=all: trained, selected and scored on every bin)"
    elif provenance.get("in_sample"):
        where = f"IN-SAMPLE (training bins, {protocol})"
    else:
        where = f"held out ({protocol})"
    checkpoint = provenance.get("checkpoint") or {}
    file = str(checkpoint.get("file", "?")).rsplit("/", 1)[-1]
    return f"{name}: {split} split, {where}, {file} epoch {checkpoint.get('epoch', '?')}"
