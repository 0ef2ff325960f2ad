"""Plain-text summaries of metrics for the terminal."""

from __future__ import annotations

import re
from collections.abc import Mapping

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
