"""The overview's charts, drawn on the server by pygal as SVG and embedded as ``data:`` images.

Nothing is fetched from elsewhere (air-gapped clusters) and no script runs: pygal escapes every
label (hosts and reasons in the log can be chosen by clients), and an SVG shown as an image can
neither run the small config script pygal always writes into it nor touch the page. The numbers
are also on the page as tables.
"""

from __future__ import annotations

import base64
import datetime

import pygal
from pygal.style import Style

from authz.audit import index

__all__ = ["decisions_over_time", "denials_by_reason", "image"]

COLORS = {"allow": "#2e7d32", "deny": "#c62828", "error": "#ef6c00"}
_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#222",
    foreground_strong="#222",
    foreground_subtle="#888",
    colors=tuple(COLORS.values()),
    font_family="DejaVu Sans, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    value_font_size=10,
    tooltip_font_size=12,
    opacity="1",  # stacked segments in their own colour, not blended with the one below
    opacity_hover="1",
)
_DENIAL_STYLE = Style(**{**_STYLE.to_dict(), "colors": (COLORS["deny"],)})
_COMMON = {"js": [], "disable_xml_declaration": True, "style": _STYLE, "height": 280, "width": 900, "margin": 8}


def image(svg: str) -> str:
    """A ``data:`` URL for an ``<img src>``."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _label(start_ms: int, bucket_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(start_ms / 1000, tz=datetime.UTC)
    if bucket_ms >= 86_400_000:
        return moment.strftime("%Y-%m-%d")
    if bucket_ms >= 3_600_000:
        return moment.strftime("%m-%d %H:00")
    return moment.strftime("%H:%M")


def decisions_over_time(overview: index.Overview) -> str:
    """Allowed, denied and error decisions per time bucket, stacked."""
    chart = pygal.StackedBar(
        **_COMMON,
        title="Decisions over time (UTC)",
        x_label_rotation=30,
        show_minor_x_labels=False,
        legend_at_bottom=True,
        legend_at_bottom_columns=3,
    )
    labels = [_label(start, overview.bucket_ms) for start, _ in overview.buckets]
    chart.x_labels = labels
    every = max(1, len(labels) // 12)
    chart.x_labels_major = labels[::every]
    for decision in COLORS:
        chart.add(decision, [counts.get(decision, 0) or None for _, counts in overview.buckets])
    return str(chart.render(is_unicode=True))


def denials_by_reason(overview: index.Overview) -> str:
    """Denied and error decisions by reason code."""
    chart = pygal.HorizontalBar(
        **{**_COMMON, "height": max(160, 40 + 28 * len(overview.reasons)), "width": 600, "style": _DENIAL_STYLE},
        title="Denials by reason",
        show_legend=False,
        print_values=True,
    )
    chart.x_labels = [reason or "(none)" for reason, _ in reversed(overview.reasons)]
    chart.add("denials", [n for _, n in reversed(overview.reasons)])
    return str(chart.render(is_unicode=True))
