"""Summaries of a benchmark run: medians, the text and markdown tables, JSON and the plot.

Rules:
1. Only this module knows the output formats; run.py hands it plain dicts.
2. matplotlib is imported lazily with the Agg backend, so the rest works headless
   and without the ``bench`` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Iterable

COLUMNS = ("target", "protocol", "clients", "tps", "p50 ms", "p99 ms", "cpu s/1k tx")
_METRICS = ("tps", "p50_ms", "p99_ms", "cpu_s_per_1k_tx", "postgres_cpu_s_per_1k_tx")


def medians(runs: list[dict], order: Iterable[tuple[str, str, int]]) -> list[dict]:
    """Return one row per (target, protocol, clients) with the median of each metric.

    Runs that produced no number for a metric (failed, or n/a) are left out of that
    metric's median; a row with no usable run has None there.
    """
    rows = []
    for target, protocol, clients in order:
        group = [r for r in runs if (r["target"], r["protocol"], r["clients"])
                 == (target, protocol, clients)]
        if not group:
            continue
        row: dict = {"target": target, "protocol": protocol, "clients": clients,
                     "runs": len(group), "errors": sum(1 for r in group if r.get("error"))}
        for metric in _METRICS:
            values = [r[metric] for r in group if r.get(metric) is not None]
            row[metric] = statistics.median(values) if values else None
        rows.append(row)
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _cells(row: dict) -> list[str]:
    cpu = row["cpu_s_per_1k_tx"]
    return [
        row["target"], row["protocol"], str(row["clients"]), _fmt(row["tps"], 0),
        _fmt(row["p50_ms"], 3), _fmt(row["p99_ms"], 3),
        "n/a" if cpu is None else f"{cpu:.4f}",
    ]


def text_table(rows: list[dict]) -> str:
    """Return the median rows as an aligned plain-text table."""
    body = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = []
    for n, line in enumerate(body):
        cells = [c.ljust(w) if i < 2 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """Return the median rows as a GitHub markdown table (numbers right-aligned)."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join([":---", ":---"] + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(doc: dict) -> str:
    """Return latest.md: how the numbers were taken, then the table."""
    m, s = doc["machine"], doc["settings"]
    skipped = "".join(f"\n- {t} skipped: {why}" for t, why in doc["skipped_targets"].items())
    return (
        f"pgbench -S (select-only), {s['duration_s']} s per run, median of "
        f"{s['repeat']} interleaved runs, scale {s['scale']}, pool size {s['pool_size']}; "
        f"{doc['date']} on {m['nproc']} cores ({m['cpu_model']}), PostgreSQL "
        f"{m['postgres_version']}, {m['pgbouncer_version'] or 'PgBouncer n/a'}, "
        f"{m['ecluse_version'] or 'ecluse n/a'}. "
        "cpu s/1k tx is the pooler's CPU seconds per 1,000 transactions."
        f"{skipped}\n\n{markdown_table(doc['median'])}\n"
    )


def write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def plot(path: str, doc: dict) -> None:
    """Draw TPS against clients: one subplot per protocol, one line per target, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    s = doc["settings"]
    protocols, targets = s["protocols"], s["targets"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5),
                             sharey=True, squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for target in targets:
            rows = [r for r in doc["median"]
                    if r["target"] == target and r["protocol"] == protocol
                    and r["tps"] is not None]
            if not rows:
                continue
            (line,) = ax.plot([r["clients"] for r in rows], [r["tps"] for r in rows],
                              marker="o", label=target)
            raw = [r for r in doc["runs"] if r["target"] == target
                   and r["protocol"] == protocol and r["tps"] is not None]
            ax.scatter([r["clients"] for r in raw], [r["tps"] for r in raw],
                       s=10, alpha=0.35, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xticks(s["clients"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("pgbench clients")
        ax.set_title(f"pgbench -S, {protocol} protocol")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("transactions per second (median)")
    axes[0][-1].legend()
    m = doc["machine"]
    fig.suptitle(f"ecluse vs PgBouncer vs direct - {doc['date']}, {m['nproc']} cores, "
                 f"{s['duration_s']} s x {s['repeat']}, pool size {s['pool_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results_dir: str, doc: dict) -> list[str]:
    """Write <date>.json/.png and the latest.json/.png/.md copies; return the paths written."""
    os.makedirs(results_dir, exist_ok=True)
    dated_json = os.path.join(results_dir, f"{doc['date']}.json")
    dated_png = os.path.join(results_dir, f"{doc['date']}.png")
    latest_md = os.path.join(results_dir, "latest.md")
    write_json(dated_json, doc)
    shutil.copyfile(dated_json, os.path.join(results_dir, "latest.json"))
    written = [dated_json, os.path.join(results_dir, "latest.json")]
    try:
        plot(dated_png, doc)
    except ImportError as exc:
        print(f"bench: no plot ({exc}); install the bench extra: pip install -e '.[bench]'")
    else:
        shutil.copyfile(dated_png, os.path.join(results_dir, "latest.png"))
        written += [dated_png, os.path.join(results_dir, "latest.png")]
    with open(latest_md, "w", encoding="utf-8") as f:
        f.write(markdown_report(doc))
    written.append(latest_md)
    return written
