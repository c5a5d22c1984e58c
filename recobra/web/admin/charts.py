"""The dashboard's charts: SVG rendered on the server by pygal, inlined in the page.

No JavaScript (pygal's tooltips script is left out), so the pages work under a strict
Content-Security-Policy; each chart also comes with its figures as a table for
screen readers and for people who would rather read numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pygal
from markupsafe import Markup
from pygal.style import Style

STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#111827",
    foreground_strong="#111827",
    foreground_subtle="#6b7280",
    colors=("#15803d", "#b91c1c", "#1d4ed8", "#a16207", "#6b21a8", "#0f766e", "#be185d", "#374151"),
    font_family="system-ui, -apple-system, 'Segoe UI', sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=14,
    title_font_size=16,
    value_font_size=12,
)

_COMMON = {
    "style": STYLE,
    "js": [],  # no scripts: CSP-friendly and nothing to load
    "disable_xml_declaration": True,
    "explicit_size": False,
    "legend_at_bottom": True,
    "print_values": False,
    "show_y_guides": True,
    "no_data_text": "Nothing in this period",
    "width": 720,
    "height": 360,
}


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL)


def _counts_axis(values: Sequence[int]) -> list[int]:
    """Whole numbers on a count axis (never 0.2 of a case), at most about 8 of them."""
    top = max([*values, 1])
    step = max(1, -(-top // 8))
    return list(range(0, top + step, step))


def _svg(chart: pygal.Graph, title: str) -> Markup:
    # pygal always embeds its configuration for the tooltips script in a <script>;
    # with no script loaded it does nothing, and the CSP forbids it anyway: dropped.
    svg = _SCRIPT.sub("", chart.render(is_unicode=True))
    # The SVG is pygal's own output for our numbers and labels, which it escapes.
    return Markup(svg.replace("<svg ", f'<svg role="img" aria-label="{Markup.escape(title)}" ', 1))


def recovery_over_time(labels: Sequence[str], recovered: Sequence[int], lost: Sequence[int]) -> Markup:
    """Cases recovered and lost per bucket of the period."""
    title = "Cases recovered and lost"
    chart = pygal.Bar(
        **_COMMON,
        title=title,
        x_label_rotation=-30 if len(labels) > 10 else 0,
        show_minor_x_labels=len(labels) <= 15,
        x_labels_major_every=max(1, len(labels) // 8),
    )
    chart.x_labels = list(labels)
    chart.y_labels = _counts_axis([*recovered, *lost])
    chart.add("Recovered", list(recovered))
    chart.add("Lost", list(lost))
    return _svg(chart, title)


OUTCOMES = ("recovered", "lost", "open", "other")


def outcomes_by_category(counts: Mapping[str, Mapping[str, int]]) -> Markup:
    """Cases by first decline category, stacked by outcome."""
    title = "Outcomes by decline category"
    categories = list(counts)
    chart = pygal.HorizontalStackedBar(
        **{**_COMMON, "height": max(240, 70 + 40 * len(categories))}, title=title
    )
    chart.x_labels = [c.replace("_", " ") for c in categories]
    chart.y_labels = _counts_axis([sum(counts[c].values()) for c in categories])
    for outcome in OUTCOMES:
        values = [counts[c].get(outcome, 0) for c in categories]
        if any(values):
            chart.add(outcome, values)
    return _svg(chart, title)


def reasons(counts: Mapping[str, int]) -> Markup:
    """Exit survey answers by reason."""
    title = "Why customers leave"
    chart = pygal.HorizontalBar(
        **{**_COMMON, "height": max(220, 70 + 40 * len(counts)), "show_legend": False}, title=title
    )
    chart.x_labels = [r.replace("_", " ") for r in counts]
    chart.y_labels = _counts_axis(list(counts.values()))
    chart.add("answers", list(counts.values()))
    return _svg(chart, title)


def reasons_over_time(labels: Sequence[str], by_reason: Mapping[str, Sequence[int]]) -> Markup:
    """Exit survey answers per bucket of the period, stacked by reason."""
    title = "Answers over time, by reason"
    chart = pygal.StackedBar(
        **_COMMON,
        title=title,
        x_label_rotation=-30 if len(labels) > 10 else 0,
        x_labels_major_every=max(1, len(labels) // 8),
        show_minor_x_labels=len(labels) <= 15,
    )
    chart.x_labels = list(labels)
    totals = [sum(values) for values in zip(*by_reason.values(), strict=True)] if by_reason else [0]
    chart.y_labels = _counts_axis(totals)
    for reason, values in by_reason.items():
        chart.add(reason.replace("_", " "), list(values))
    return _svg(chart, title)
