"""The terminal table and the PNG chart of a results dict (see :mod:`benchmarks.suite`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import MIB

_COLUMNS = ("scenario", "reader / figure", "samples/s", "MB/s", "other", "ok", "ratio", "target")
_RATIO_LABELS = {
    "ours_vs_webdataset_samples": "ours / webdataset (samples/s)",
    "ours_no_shuffle_vs_webdataset_samples": "ours_no_shuffle / webdataset (samples/s)",
    "ours_vs_raw_bytes": "ours / raw (MB/s)",
    "ours_no_shuffle_vs_raw_bytes": "ours_no_shuffle / raw (MB/s)",
    "ours_packed_vs_webdataset_samples": "ours_packed / webdataset (samples/s)",
    "ours_packed_vs_raw_bytes": "ours_packed / raw (MB/s)",
    "ours_vs_dataloader_only_samples": "ours / DataLoader-only ceiling (samples/s)",
    "webdataset_vs_dataloader_only_samples": "webdataset / DataLoader-only ceiling (samples/s)",
    "ours_vs_sequential_samples": "ours / sequential (samples/s)",
    "ours_vs_s3torchconnector_samples": "ours / s3torchconnector (samples/s)",
}
# which target judges which ratio of which scenario
_RATIO_TARGETS = {
    ("shards", "ours_vs_webdataset_samples"): "shards_vs_webdataset",
    ("shards", "ours_vs_raw_bytes"): "shards_vs_raw_get",
    ("shards_ttfb", "ours_vs_webdataset_samples"): "shards_ttfb_vs_webdataset",
    ("loose", "ours_vs_sequential_samples"): "loose_vs_sequential",
    ("loose", "ours_vs_s3torchconnector_samples"): "loose_vs_s3torchconnector",
    ("loose_ttfb", "ours_vs_sequential_samples"): "loose_ttfb_vs_sequential",
    ("loose_ttfb", "ours_vs_s3torchconnector_samples"): "loose_ttfb_vs_s3torchconnector",
    ("write", "ours_vs_raw_bytes"): "write_vs_raw_multipart",
}


def _num(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}"


def _target_text(target: dict[str, Any] | None) -> str:
    if target is None:
        return ""
    threshold = target["threshold"]
    shown = f"{threshold:g}" if threshold < 10_000 else f"{threshold:,.0f}"
    return f"{target['op']} {shown}{'x' if target['unit'] == 'x' else ' ' + target['unit']}"


def _status(target: dict[str, Any] | None) -> str:
    return "" if target is None else target["status"]


def _row(
    scenario: str,
    label: str,
    *,
    sps: str = "",
    mbps: str = "",
    other: str = "",
    ok: str = "",
    ratio: str = "",
    target: dict[str, Any] | None = None,
) -> tuple[str, ...]:
    judged = f"{_target_text(target)} {_status(target)}".strip()
    return (scenario, label, sps, mbps, other, ok, ratio, judged)


def _mib(value: Any) -> str:
    return _num(value / MIB if isinstance(value, int | float) else None)


def _rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    targets = {t["name"]: t for t in results.get("targets", [])}
    rows: list[tuple[str, ...]] = []
    for name, scenario in results.get("scenarios", {}).items():
        if name in ("shards", "shards_ttfb", "loose", "loose_ttfb", "write"):
            for label, reader in scenario["readers"].items():
                rows.append(
                    _row(
                        name,
                        label,
                        sps=_num(reader["samples_per_s"], 0),
                        mbps=_num(reader["mb_per_s"]),
                        other="ERROR (see JSON)" if reader["ok_rounds"] == 0 else "",
                        ok=f"{reader['ok_rounds']}/{len(reader['rounds'])}",
                    )
                )
            for key, value in scenario.get("ratios", {}).items():
                rows.append(
                    _row(
                        name,
                        f"  {_RATIO_LABELS.get(key, key)}",
                        ratio="n/a" if value is None else f"{value:.2f}x",
                        target=targets.get(_RATIO_TARGETS.get((name, key), "")),
                    )
                )
        elif name == "memory":
            for label, size in scenario["sizes"].items():
                for reader_name, reader in size["readers"].items():
                    rows.append(
                        _row(
                            name,
                            f"{reader_name} {label} shard",
                            sps=_num(reader["samples_per_s"], 0),
                            mbps=_num(reader["mb_per_s"]),
                            other=f"RSS +{_mib(reader.get('rss_growth'))} MiB",
                            ok=f"{reader['ok_rounds']}/{len(reader['rounds'])}",
                        )
                    )
            rows.append(
                _row(
                    name,
                    "  ours, largest shard",
                    other=f"RSS +{_mib(scenario.get('rss_growth_large'))} MiB",
                    target=targets.get("memory_1gib_rss"),
                )
            )
        elif name == "manifest":
            rows.append(
                _row(
                    name,
                    f"iter {scenario['params']['entries']:,} entries",
                    other=f"{_num(scenario.get('entries_per_s'), 0)} entries/s, "
                    f"RSS +{_mib(scenario.get('rss_growth'))} MiB",
                    ok=str(scenario["readers"]["iter_manifest_entries"]["ok_rounds"]),
                    target=targets.get("manifest_entries_per_s"),
                )
            )
        elif name == "plan":
            p = scenario["params"]
            rows.append(
                _row(
                    name,
                    f"{p['shards']:,} shards x {p['ranks']} ranks x {p['workers']} workers",
                    other=f"{_num(scenario.get('elapsed_s'), 3)} s "
                    f"(build {_num(scenario.get('build_s'), 3)} s)",
                    ok=str(scenario["readers"]["epoch_plan"]["ok_rounds"]),
                    target=targets.get("plan_seconds"),
                )
            )
    return rows


def table(results: dict[str, Any]) -> str:
    """Medians, ratios and PASS/FAIL per target, as aligned text."""
    rows = [_COLUMNS, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    right = {2, 3, 6}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    machine = results.get("machine", {})
    memory = machine.get("memory_bytes")
    header = (
        f"machine: {machine.get('nproc')} cores, {machine.get('cpu_model')}, "
        f"{_num(None if memory is None else memory / 2**30)} GiB; "
        f"TTFB scenarios +{results.get('ttfb_ms', 0):g} ms; "
        f"{'quick' if results.get('quick') else 'full'} run in {results.get('duration_s')} s"
    )
    passed = [t for t in results.get("targets", []) if t["status"] == "PASS"]
    judged = [t for t in results.get("targets", []) if t["status"] != "n/a"]
    footer = f"targets: {len(passed)}/{len(judged)} PASS"
    return "\n".join([header, *lines, footer])


def chart(results: dict[str, Any], path: Path) -> None:
    """A horizontal bar per target: measured / threshold (inverted for 'below' targets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in results.get("targets", []) if t["margin"] is not None]
    fig, ax = plt.subplots(figsize=(11, 0.55 * max(len(targets), 1) + 1.6))
    if targets:
        names = [t["description"] for t in targets][::-1]
        margins = [t["margin"] for t in targets][::-1]
        colors = ["#2a9d5c" if t["status"] == "PASS" else "#d1495b" for t in targets][::-1]
        bars = ax.barh(names, margins, color=colors)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        for bar, target in zip(bars, targets[::-1], strict=True):
            measured = target["measured"]
            shown = f"{measured:,.2f}" if measured < 1000 else f"{measured:,.0f}"
            unit = "x" if target["unit"] == "x" else f" {target['unit']}"
            ax.annotate(
                f"  {shown}{unit} ({_target_text(target)}) {target['status']}",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                va="center",
                fontsize=8,
            )
        right = max(max(margins) * 3, 2.0)
        ax.set_xlim(min(min(margins) / 1.5, 0.5), right)
    ax.set_xlabel("measured / target (log scale; > 1 passes)")
    kind = "quick" if results.get("quick") else "full"
    machine = results.get("machine", {})
    ax.set_title(
        f"s3exchange benchmark targets ({kind} run, {machine.get('nproc')} cores, "
        f"SeaweedFS on 127.0.0.1)",
        fontsize=10,
    )
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
