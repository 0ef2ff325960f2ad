"""Plain-text summaries of metrics for the terminal."""

from __future__ import annotations

from collections.abc import Mapping


def format_metrics(metrics: Mapping[str, float], title: str = "metrics") -> str:
    """Two-column table of metric names and values, one per line."""
    width = max([len(name) for name in metrics] + [len(title)])
    rule = "-" * (width + 14)
    lines = [rule, f"{title:<{width}}  {'value':>12}", rule]
    lines += [f"{name:<{width}}  {value:>12.4f}" for name, value in metrics.items()]
    lines.append(rule)
    return "\n".join(lines)
