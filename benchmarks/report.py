"""The terminal table and the PNG chart of a results dict (see :mod:`benchmarks.suite`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import MIB

_COLUMNS = (
    "scenario",
    "reader / figure",
    "samples/s",
    "MB/s",
    "of raw GET",
    "1st batch s",
    "other",
    "ok",
    "ratio",
    "target",
)
_RIGHT = {2, 3, 4, 5, 8}
_THROUGHPUT = ("shards", "shards_ttfb", "loose", "loose_ttfb", "random", "random_ttfb", "write")
_NAMES = {
    "raw": "raw GET",
    "dataloader_only": "DataLoader alone (list)",
    "dataloader_only_packed": "DataLoader alone (pack_bytes)",
}
_METRICS = {"samples": "samples/s", "bytes": "MB/s", "first_batch": "time to first batch"}


def ratio_label(key: str) -> str:
    """``loader_vs_raw_bytes`` -> ``loader / raw GET (MB/s)``."""
    reader, _, rest = key.partition("_vs_")
    for metric, shown in _METRICS.items():
        if rest.endswith("_" + metric):
            baseline = rest.removesuffix("_" + metric)
            return f"{_NAMES.get(reader, reader)} / {_NAMES.get(baseline, baseline)} ({shown})"
    return key


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
    if target is None:
        return ""
    if target.get("min_workers"):  # a GPU-node target: say so, judged or not
        return f"{target['status']} (GPU node, {target['min_workers']}+ workers)"
    return str(target["status"])


def _row(
    scenario: str,
    label: str,
    *,
    sps: str = "",
    mbps: str = "",
    raw: str = "",
    first: str = "",
    other: str = "",
    ok: str = "",
    ratio: str = "",
    targets: list[dict[str, Any]] | None = None,
) -> tuple[str, ...]:
    judged = "; ".join(
        f"{_target_text(target)} {_status(target)}".strip() for target in targets or []
    )
    return (scenario, label, sps, mbps, raw, first, other, ok, ratio, judged)


def _problem(reader: dict[str, Any]) -> str:
    """Why a reader has no figures: skipped (not available) or an error."""
    if reader["ok_rounds"]:
        return ""
    if reader.get("skipped"):
        return str(reader["skipped"])
    return "ERROR (see JSON)"


def _mib(value: Any) -> str:
    return _num(value / MIB if isinstance(value, int | float) else None)


def _rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    targets = {t["name"]: t for t in results.get("targets", [])}
    by_ratio: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for target in targets.values():
        if target.get("ratio"):
            by_ratio.setdefault((target["scenario"], target["ratio"]), []).append(target)
    rows: list[tuple[str, ...]] = []
    for name, scenario in results.get("scenarios", {}).items():
        if name in _THROUGHPUT:
            for label, reader in scenario["readers"].items():
                rows.append(
                    _row(
                        name,
                        label,
                        sps=_num(reader["samples_per_s"], 0),
                        mbps=_num(reader["mb_per_s"]),
                        raw=_num(reader.get("raw_get_fraction"), 3),
                        first=_num(reader.get("first_batch_s"), 3),
                        other=_problem(reader),
                        ok=f"{reader['ok_rounds']}/{len(reader['rounds'])}",
                    )
                )
            for key, value in scenario.get("ratios", {}).items():
                rows.append(
                    _row(
                        name,
                        f"  {ratio_label(key)}",
                        ratio="n/a" if value is None else f"{value:.2f}x",
                        targets=by_ratio.get((name, key)),
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
                    targets=[targets["memory_1gib_rss"]],
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
                    targets=[targets["manifest_entries_per_s"]],
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
                    targets=[targets["plan_seconds"]],
                )
            )
    return rows


def table(results: dict[str, Any]) -> str:
    """Medians, ratios and PASS/FAIL per target, as aligned text."""
    rows = [_COLUMNS, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in _RIGHT else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    machine = results.get("machine", {})
    memory = machine.get("memory_bytes")
    header = (
        f"machine: {machine.get('nproc')} cores, {machine.get('cpu_model')}, "
        f"{_num(None if memory is None else memory / 2**30)} GiB, "
        f"GPUs: {', '.join(machine.get('gpus') or []) or 'none'}; "
        f"{results.get('workers')} workers per reader; batches to "
        f"{results.get('device', {}).get('used', 'cpu')}; "
        f"TTFB scenarios +{results.get('ttfb_ms', 0):g} ms; "
        f"{'quick' if results.get('quick') else 'full'} run in {results.get('duration_s')} s"
    )
    all_targets = results.get("targets", [])
    passed = [t for t in all_targets if t["status"] == "PASS"]
    judged = [t for t in all_targets if t["status"] != "n/a"]
    by_workers = [t for t in all_targets if t.get("note")]
    unmeasured = len(all_targets) - len(judged) - len(by_workers)
    footer = f"targets: {len(passed)}/{len(judged)} PASS"
    if by_workers:
        least = min(t["min_workers"] for t in by_workers)
        footer += f"; {len(by_workers)} GPU-node targets judged only with --workers >= {least}"
    if unmeasured:
        footer += f"; {unmeasured} not measured in this run"
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
        right = max(max(margins) * 8, 2.0)  # room for the label of the longest bar
        ax.set_xlim(min(min(margins) / 1.5, 0.5), right)
    ax.set_xlabel("measured / target (log scale; > 1 passes)")
    kind = "quick" if results.get("quick") else "full"
    machine = results.get("machine", {})
    ax.set_title(
        f"s3exchange benchmark targets ({kind} run, {machine.get('nproc')} cores,\n"
        f"{results.get('workers')} workers, batches to "
        f"{results.get('device', {}).get('used', 'cpu')}, SeaweedFS on 127.0.0.1)",
        fontsize=10,
    )
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
