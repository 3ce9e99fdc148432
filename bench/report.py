"""Summaries of a benchmark run: medians, the text and markdown tables, JSON and the plot.

Rules:
1. Only this module knows the output formats; run.py hands it plain dicts.
2. matplotlib is imported lazily with the Agg backend, so the rest works headless
   and without the ``bench`` extra.
3. A (target, protocol) that cannot run is shown as "unsupported" and a run that
   failed gives no number: neither is ever turned into a figure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Iterable

COLUMNS = ("target", "protocol", "clients", "tps", "p50 ms", "p99 ms", "cpu s/1k tx",
           "prepared/extended")
_METRICS = ("tps", "p50_ms", "p99_ms", "cpu_s_per_1k_tx", "postgres_cpu_s_per_1k_tx")
_TARGET_COLORS = {"direct": "C0", "pgbouncer": "C1", "ecluse": "C2"}


def medians(runs: list[dict], order: Iterable[tuple[str, str, int]],
            unsupported: dict[tuple[str, str], str] | None = None) -> list[dict]:
    """Return one row per (target, protocol, clients) with the median of each metric.

    Only runs without an error count: a pgbench run with aborted clients or failed
    transactions gives no number. A row whose runs all failed has status "failed"
    and None for every metric; a (target, protocol) in ``unsupported`` gets a row
    with status "unsupported" and the reason, and no metrics. Prepared rows also get
    ``tps_vs_extended``, their TPS over the extended row's for the same target and
    clients (None when either is missing).
    """
    unsupported = unsupported or {}
    rows = []
    for target, protocol, clients in order:
        row: dict = {"target": target, "protocol": protocol, "clients": clients}
        if (target, protocol) in unsupported:
            row.update(status="unsupported", reason=unsupported[target, protocol], runs=0,
                       errors=0, **dict.fromkeys(_METRICS))
            rows.append(row)
            continue
        group = [r for r in runs if (r["target"], r["protocol"], r["clients"])
                 == (target, protocol, clients)]
        if not group:
            continue
        usable = [r for r in group if not r.get("error")]
        row.update(status="ok" if usable else "failed", runs=len(group),
                   errors=len(group) - len(usable))
        for metric in _METRICS:
            values = [r[metric] for r in usable if r.get(metric) is not None]
            row[metric] = statistics.median(values) if values else None
        rows.append(row)
    _add_prepared_ratios(rows)
    return rows


def _add_prepared_ratios(rows: list[dict]) -> None:
    extended = {(r["target"], r["clients"]): r["tps"] for r in rows
                if r["protocol"] == "extended"}
    for row in rows:
        if row["protocol"] != "prepared":
            continue
        base = extended.get((row["target"], row["clients"]))
        row["tps_vs_extended"] = row["tps"] / base if row["tps"] and base else None


def prepared_gain(rows: list[dict]) -> dict[str, dict]:
    """Return, per target, what -M prepared gains over -M extended.

    ``{target: {"by_clients": {clients: ratio}, "geomean": ratio}}`` with ratio =
    prepared TPS / extended TPS, or ``{target: {"unsupported": reason}}``. Empty when
    the run did not include both protocols.
    """
    gains: dict[str, dict] = {}
    for row in rows:
        if row["protocol"] != "prepared":
            continue
        if row["status"] == "unsupported":
            gains[row["target"]] = {"unsupported": row["reason"]}
            continue
        entry = gains.setdefault(row["target"], {"by_clients": {}, "geomean": None})
        entry["by_clients"][row["clients"]] = row.get("tps_vs_extended")
    for entry in gains.values():
        ratios = [v for v in entry.get("by_clients", {}).values() if v]
        if ratios:
            entry["geomean"] = math.exp(sum(map(math.log, ratios)) / len(ratios))
    if not any(r["protocol"] == "extended" for r in rows):
        return {}
    return gains


def gain_lines(gains: dict[str, dict]) -> list[str]:
    """Return one sentence per target on prepared vs extended, for the summaries."""
    lines = []
    for target, entry in gains.items():
        if "unsupported" in entry:
            lines.append(f"{target}: -M prepared unsupported: {entry['unsupported']}")
            continue
        if entry["geomean"] is None:
            lines.append(f"{target}: prepared/extended n/a (no pair of successful runs)")
            continue
        per = ", ".join(f"{c} client{'s' * (int(c) != 1)} {_ratio(v)}"
                        for c, v in entry["by_clients"].items())
        lines.append(f"{target}: prepared/extended TPS {_ratio(entry['geomean'])} "
                     f"(geometric mean; {per})")
    return lines


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _cells(row: dict) -> list[str]:
    ratio = _ratio(row.get("tps_vs_extended")) if row["protocol"] == "prepared" else ""
    if row["status"] != "ok":
        # "unsupported": never run; "failed": every run failed (see the JSON for why).
        return [row["target"], row["protocol"], str(row["clients"]), row["status"],
                "-", "-", "-", "-" if ratio else ""]
    cpu = row["cpu_s_per_1k_tx"]
    tps = _fmt(row["tps"], 0)
    if row["errors"]:
        tps += f" ({row['errors']}/{row['runs']} failed)"
    return [
        row["target"], row["protocol"], str(row["clients"]), tps,
        _fmt(row["p50_ms"], 3), _fmt(row["p99_ms"], 3),
        "n/a" if cpu is None else f"{cpu:.4f}", ratio,
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
    """Return latest.md: how the numbers were taken, the table, then prepared vs extended."""
    m, s = doc["machine"], doc["settings"]
    skipped = "".join(f"\n- {t} skipped: {why}" for t, why in doc["skipped_targets"].items())
    gains = "".join(f"\n- {line}" for line in gain_lines(doc.get("prepared_vs_extended", {})))
    if gains:
        gains = ("\n\nWhat `-M prepared` gains over `-M extended` (ratio of median TPS):"
                 f"\n{gains}")
    return (
        f"pgbench -S (select-only), {s['duration_s']} s per run, median of "
        f"{s['repeat']} interleaved runs, scale {s['scale']}, pool size {s['pool_size']}; "
        f"{doc['date']} on {m['nproc']} cores ({m['cpu_model']}), PostgreSQL "
        f"{m['postgres_version']}, {m['pgbouncer_version'] or 'PgBouncer n/a'}, "
        f"{m['ecluse_version'] or 'ecluse n/a'}. "
        "cpu s/1k tx is the pooler's CPU seconds per 1,000 transactions; "
        "prepared/extended is a prepared row's TPS over the extended row's."
        f"{skipped}\n\n{markdown_table(doc['median'])}{gains}\n"
    )


def write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def plot(path: str, doc: dict) -> None:
    """Draw TPS against clients: one subplot per protocol, one line per target, log x.

    A target that cannot run a protocol is named in that panel instead of drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    s = doc["settings"]
    protocols, targets = s["protocols"], s["targets"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 4.5),
                             sharey=True, squeeze=False)
    handles = {}
    top = 0.0
    for ax, protocol in zip(axes[0], protocols, strict=True):
        notes = []
        for target in targets:
            color = _TARGET_COLORS.get(target)
            rows = [r for r in doc["median"]
                    if r["target"] == target and r["protocol"] == protocol]
            if any(r["status"] == "unsupported" for r in rows):
                notes.append(f"{target}: unsupported")
                continue
            rows = [r for r in rows if r["tps"] is not None]
            if not rows:
                notes.append(f"{target}: no result")
                continue
            (line,) = ax.plot([r["clients"] for r in rows], [r["tps"] for r in rows],
                              marker="o", label=target, color=color)
            handles.setdefault(target, line)
            raw = [r for r in doc["runs"] if r["target"] == target
                   and r["protocol"] == protocol and r["tps"] is not None
                   and not r.get("error")]
            ax.scatter([r["clients"] for r in raw], [r["tps"] for r in raw],
                       s=10, alpha=0.35, color=line.get_color())
            top = max(top, *(r["tps"] for r in rows), *(r["tps"] for r in raw))
        if notes:
            ax.text(0.03, 0.03, "\n".join(notes), transform=ax.transAxes, fontsize=9,
                    color="0.35", va="bottom")
        ax.set_xscale("log")
        ax.set_xticks(s["clients"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("pgbench clients")
        ax.set_title(f"pgbench -S -M {protocol}")
        ax.grid(True, which="major", alpha=0.3)
    # Once, after every panel is drawn: the panels share y, and a set_ylim inside the
    # loop would freeze the range before the later panels' data is in.
    axes[0][0].set_ylim(0, top * 1.08 or 1)
    axes[0][0].set_ylabel("transactions per second (median)")
    ordered = [t for t in targets if t in handles]
    axes[0][-1].legend([handles[t] for t in ordered], ordered, loc="best")
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
