"""The study's report (``make study``): ``report.md`` with its tables, PNG plots (matplotlib) and
sentences computed from the numbers, from the study's entries (one per model; see
:func:`detr2d.runtime.study.run_study`) and settings. Imports no detector: it reads numbers only."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Entry = dict[str, Any]

COCO_COLUMNS = ("AP", "AP50", "APs", "APm", "APl")
NUSCENES_SCORES = ("NDS", "mAP")
#: nuScenes true-positive errors (lower is better) and what they measure.
NUSCENES_ERRORS = {
    "mATE": "translation error (m)",
    "mASE": "scale error (1 - IoU)",
    "mAOE": "orientation error (rad)",
    "mAVE": "velocity error (m/s)",
    "mAAE": "attribute error (1 - acc)",
}
PRIMARY = {"2d": "AP", "bev": "NDS"}
PER = {"2d": "image", "bev": "frame"}


def finished(entries: Sequence[Entry], group: str) -> list[Entry]:
    """The entries of ``group`` that have results."""
    return [e for e in entries if e["group"] == group and e.get("result")]


def metric(entry: Entry, key: str) -> float:
    return float(entry["result"]["metrics"][key])


def compare(
    entries: Sequence[Entry], value: Callable[[Entry], float], what: str, higher: bool, fmt: str = ".3f"
) -> str:
    """A sentence naming the best of ``entries`` by ``value`` and its margin over the next one, e.g.
    "**a** has the highest AP: 0.512, 0.103 above b (0.409)."; models that tie (equal as printed) are
    named together. Undefined values (negative: COCO's -1, or not finite) are left out; '' if none is left.
    """
    valid = [e for e in entries if math.isfinite(value(e)) and value(e) >= 0]
    if not valid:
        return ""
    ranked = sorted(valid, key=value, reverse=higher)
    shown = [f"{value(e):{fmt}}" for e in ranked]
    leaders = [e["name"] for e, text in zip(ranked, shown, strict=True) if text == shown[0]]
    word = "highest" if higher else "lowest"
    if len(leaders) == 1:
        sentence = f"**{leaders[0]}** has the {word} {what}: {shown[0]}"
    else:
        sentence = f"**{' and '.join(leaders)}** tie for the {word} {what}: {shown[0]}"
    if len(ranked) == 1:
        return sentence + " (the only model with a value)."
    if len(leaders) == len(ranked):
        return sentence + " (every model)."
    best, second = ranked[0], ranked[len(leaders)]
    margin = abs(value(best) - value(second))
    sentence += f", {margin:{fmt}} {'above' if higher else 'below'} {second['name']} ({value(second):{fmt}})"
    if not higher and value(second) > 0 and round(100 * margin / value(second)) > 0:
        sentence += f", {100 * margin / value(second):.0f}% less"
    return sentence + "."


def sentences(entries: Sequence[Entry]) -> dict[str, list[str]]:
    """The report's findings per group, every number computed from the results."""
    found: dict[str, list[str]] = {"2d": [], "bev": []}
    two_d, bev = finished(entries, "2d"), finished(entries, "bev")
    if two_d:
        found["2d"].append(compare(two_d, lambda e: metric(e, "AP"), "final COCO AP", True))
        first = [e for e in two_d if e["result"]["history"] and "AP" in e["result"]["history"][0]["metrics"]]
        found["2d"].append(
            compare(
                first, lambda e: e["result"]["history"][0]["metrics"]["AP"], "AP after the first epoch", True
            )
        )
        for size in ("APs", "APm", "APl"):
            found["2d"].append(compare(two_d, lambda e, k=size: metric(e, k), size, True))
    if bev:
        found["bev"].append(compare(bev, lambda e: metric(e, "NDS"), "NDS", True))
        found["bev"].append(compare(bev, lambda e: metric(e, "mAP"), "mAP", True))
        for key, what in NUSCENES_ERRORS.items():
            found["bev"].append(compare(bev, lambda e, k=key: metric(e, k), f"{what} ({key})", False))
    for group, rows in (("2d", two_d), ("bev", bev)):
        if rows:
            found[group].append(
                compare(
                    rows,
                    lambda e: e["result"]["latency_ms"]["fast"],
                    f"fast-path latency (ms/{PER[group]})",
                    False,
                    ".1f",
                )
            )
            speedups = {e["name"]: latency_speedup(e) for e in rows}
            low, high = min(speedups, key=speedups.get), max(speedups, key=speedups.get)
            found[group].append(
                f"The fast path runs {speedups[low]:.2f}x ({low}) to {speedups[high]:.2f}x ({high}) "
                "the speed of eager inference."
            )
            found[group].append(
                compare(rows, lambda e: e["result"]["train_time_s"] / 60, "training time (min)", False, ".1f")
            )
    return {group: [s for s in lines if s] for group, lines in found.items()}


def latency_speedup(entry: Entry) -> float:
    latency = entry["result"]["latency_ms"]
    return latency["eager"] / latency["fast"]


def score(value: float) -> str:
    """A metric for a table: 3 decimals, "n/a" where undefined (COCO's -1: no object of that size)."""
    return f"{value:.3f}" if math.isfinite(value) and value >= 0 else "n/a"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cost_row(entry: Entry) -> list[str]:
    r = entry["result"]
    return [
        entry["name"],
        f"{r['params'] / 1e6:.2f}",
        f"{r['train_time_s']:.0f}",
        f"{r['images_per_s']:.1f}",
        f"{r['peak_rss_mb']:.0f}",
        f"{r['latency_ms']['eager']:.1f}",
        f"{r['latency_ms']['fast']:.1f}",
    ]


COST_HEADER = ["model", "params (M)", "train s", "train images/s", "peak RSS MB", "eager ms", "fast ms"]


def plot_2d(rows: Sequence[Entry], path: Path) -> None:
    """AP per epoch and AP vs training wall time, one line per model."""
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for entry in rows:
        history = [h for h in entry["result"]["history"] if "AP" in h["metrics"]]
        ap = [h["metrics"]["AP"] for h in history]
        by_epoch.plot([h["epoch"] for h in history], ap, marker="o", label=entry["name"])
        by_time.plot([h["train_time_s"] / 60 for h in history], ap, marker="o", label=entry["name"])
    top = max(
        [
            0.05,
            *(metric(e, "AP") * 1.1 for e in rows),
            *(h["metrics"].get("AP", 0) * 1.1 for e in rows for h in e["result"]["history"]),
        ]
    )
    for axis in (by_epoch, by_time):
        axis.set_ylim(0, top)
    by_epoch.set(xlabel="epoch", ylabel="COCO AP (val)", title="AP vs epoch")
    by_time.set(xlabel="training wall time (min)", ylabel="COCO AP (val)", title="AP vs wall time")
    for axis in (by_epoch, by_time):
        axis.grid(alpha=0.3)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bev(rows: Sequence[Entry], path: Path) -> None:
    """One bar chart per nuScenes number (NDS, mAP: higher is better; the five errors: lower is better)."""
    keys = [*NUSCENES_SCORES, *NUSCENES_ERRORS]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys) + 1, 3.6))
    names = [e["name"] for e in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    for axis, key in zip(axes, keys, strict=True):
        values = [metric(e, key) for e in rows]
        axis.bar(range(len(rows)), values, color=colors)
        axis.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        better = "higher" if key in NUSCENES_SCORES else "lower"
        axis.set_title(f"{key} ({better} better)", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(groups: dict[str, list[Entry]], path: Path) -> None:
    """Accuracy (AP, NDS) vs latency per image / frame, eager (hollow) and fast path (filled) joined."""
    shown = {g: rows for g, rows in groups.items() if rows}
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    for axis, (group, rows) in zip(axes[0], shown.items(), strict=True):
        for i, entry in enumerate(rows):
            latency, score = entry["result"]["latency_ms"], metric(entry, PRIMARY[group])
            axis.plot([latency["eager"], latency["fast"]], [score, score], color=f"C{i}", alpha=0.5)
            axis.scatter([latency["eager"]], [score], facecolors="none", edgecolors=f"C{i}")
            axis.scatter([latency["fast"]], [score], color=f"C{i}", label=entry["name"])
        axis.set(xlabel=f"latency (ms/{PER[group]}; hollow eager, filled fast)", ylabel=PRIMARY[group])
        axis.set_title(f"{group}: {PRIMARY[group]} vs latency")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def settings_table(rows: Sequence[Entry]) -> str:
    """One row per model, one column per setting (the values each run's config resolved to)."""
    keys = list(rows[0]["result"]["settings"])
    return table(
        ["model", *keys], [[e["name"], *(e["result"]["settings"].get(k) for k in keys)] for e in rows]
    )


def differing_settings(rows: Sequence[Entry]) -> list[str]:
    """Settings whose value is not the same for every model of a group."""
    keys = rows[0]["result"]["settings"]
    return [k for k in keys if len({str(e["result"]["settings"].get(k)) for e in rows}) > 1]


def write_report(out: Path, entries: Sequence[Entry], settings: dict[str, Any]) -> Path:
    """Write ``out/report.md`` and its PNGs (``study_2d_ap.png``, ``study_bev_metrics.png``,
    ``study_latency.png``, each only when its group has results). Returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    groups = {group: finished(entries, group) for group in ("2d", "bev")}
    found = sentences(entries)
    lines = [
        "# Study: every model side by side",
        "",
        f"Written by `tools/study.py` on {datetime.datetime.now().isoformat(timespec='seconds')}; profile "
        f"`{settings['profile']}`; {settings['machine']}; this invocation took "
        f"{settings['wall_s'] / 60:.1f} min (reused runs cost nothing).",
        "",
        "## Runs",
        "",
        table(
            ["group", "model", "config", "status", "why"],
            [[e["group"], e["name"], f"`{e['config']}`", e["status"], e.get("reason", "")] for e in entries],
        ),
        "",
        f"Latency: {settings['latency']}. Peak RSS: the high-water mark of the model's own process "
        "(training, evaluation and latency). Train images/s: training samples per second times the images "
        "per sample (BEV: cameras x frames read).",
    ]
    data = settings["data"]
    if groups["2d"]:
        rows = groups["2d"]
        lines += [
            "",
            "## 2D: synthetic COCO (pycocotools, val split, after every epoch)",
            "",
            f"Data: {data['2d']}.",
            "",
            table(
                [*COST_HEADER[:1], *COCO_COLUMNS, *COST_HEADER[1:]],
                [[e["name"], *(score(metric(e, k)) for k in COCO_COLUMNS), *cost_row(e)[1:]] for e in rows],
            ),
            "",
            *(f"- {s}" for s in found["2d"]),
            "",
            "![AP vs epoch and wall time](study_2d_ap.png)",
        ]
        plot_2d(rows, out / "study_2d_ap.png")
    if groups["bev"]:
        rows = groups["bev"]
        classes = sorted({c for e in rows for c in e["result"]["metrics"].get("per_class_AP", {})})
        lines += [
            "",
            "## BEV: synthetic nuScenes (official DetectionEval, val split, after training)",
            "",
            f"Data: {data['bev']}.",
            "",
            table(
                [*COST_HEADER[:1], *NUSCENES_SCORES, *NUSCENES_ERRORS, *COST_HEADER[1:]],
                [
                    [
                        e["name"],
                        *(f"{metric(e, k):.3f}" for k in (*NUSCENES_SCORES, *NUSCENES_ERRORS)),
                        *cost_row(e)[1:],
                    ]
                    for e in rows
                ],
            ),
            "",
            *(f"- {s}" for s in found["bev"]),
            "",
            "![nuScenes metrics per model](study_bev_metrics.png)",
            "",
            "Per-class AP:",
            "",
            table(
                ["model", *classes],
                [
                    [e["name"], *(f"{e['result']['metrics']['per_class_AP'].get(c, 0):.3f}" for c in classes)]
                    for e in rows
                ],
            ),
        ]
        plot_bev(rows, out / "study_bev_metrics.png")
    if groups["2d"] or groups["bev"]:
        lines += ["", "## Latency vs accuracy", "", "![accuracy vs latency](study_latency.png)"]
        plot_latency(groups, out / "study_latency.png")
    lines += ["", "## Settings (as each run's config resolved them)"]
    for group, rows in groups.items():
        if rows:
            differ = differing_settings(rows)
            same = (
                "every setting is the same for every model"
                if not differ
                else f"differing: {', '.join(differ)}"
            )
            lines += ["", f"{group} ({same}):", "", settings_table(rows)]
    notes = [f"- {e['name']}: {e['note']}" for e in entries if e.get("note")]
    if notes:
        lines += ["", "## Differences inherent to the models", "", *notes]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
