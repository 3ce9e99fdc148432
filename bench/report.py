"""Summaries of a benchmark run: medians, the text and markdown tables, JSON and the plot.

Rules:
1. Only this module knows the output formats; run.py hands it plain dicts.
2. matplotlib is imported lazily with the Agg backend, so the rest works headless
   and without the ``bench`` extra.
3. A (target, protocol) that cannot run is shown as "unsupported" and a run that
   failed gives no number: neither is ever turned into a figure.
4. A row is one (target, protocol, tls, clients); ratios only ever compare rows that
   differ in one of those (prepared vs extended, or TLS vs plain), never across targets,
   except in the goals (goals.py), which say "met" or "not met" against PgBouncer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Iterable

COLUMNS = ("target", "protocol", "tls", "clients", "tps", "p50 ms", "p99 ms", "cpu s/1k tx",
           "prepared/extended", "tls/plain")
# Without a single TLS row the table keeps its plain-only shape.
_TLS_COLUMNS = ("tls", "tls/plain")
TLS_COLUMNS = ("target", "protocol", "clients", "plain tps", "tls tps", "tls/plain",
               "cpu s/1k tx plain", "cpu s/1k tx tls")
_METRICS = ("tps", "p50_ms", "p99_ms", "cpu_s_per_1k_tx", "postgres_cpu_s_per_1k_tx")
_TARGET_COLORS = {"direct": "C0", "pgbouncer": "C1", "ecluse": "C2", "ecluse-w1": "C2"}
_PANEL_TITLES = {"churn": "pgbench -S -M simple -C (churn)"}
IDLE_COLUMNS = ("target", "asked", "reached", "processes", "rss MB", "pss MB",
                "rss KB/client", "pss KB/client", "ramp s", "note")


def target_color(target: str) -> str:
    """Return the plot colour of a target; ecluse with several workers gets its own."""
    return _TARGET_COLORS.get(target, "C3" if target.startswith("ecluse") else "C4")


def medians(runs: list[dict], order: Iterable[tuple[str, str, bool, int]],
            unsupported: dict[tuple[str, str], str] | None = None) -> list[dict]:
    """Return one row per (target, protocol, tls, clients) with the median of each metric.

    Only runs without an error count: a pgbench run with aborted clients or failed
    transactions gives no number. A row whose runs all failed has status "failed"
    and None for every metric; a (target, protocol) in ``unsupported`` gets a row
    with status "unsupported" and the reason, and no metrics, with or without TLS.
    Prepared rows also get ``tps_vs_extended``, their TPS over the extended row's for
    the same target, tls and clients; TLS rows get ``tps_vs_plain`` and
    ``cpu_vs_plain``, over the plain row's for the same target, protocol and clients
    (None when either side is missing). Runs without a "tls" key count as plain.
    """
    unsupported = unsupported or {}
    rows = []
    for target, protocol, tls, clients in order:
        row: dict = {"target": target, "protocol": protocol, "tls": tls, "clients": clients}
        if (target, protocol) in unsupported:
            row.update(status="unsupported", reason=unsupported[target, protocol], runs=0,
                       errors=0, **dict.fromkeys(_METRICS))
            rows.append(row)
            continue
        group = [r for r in runs if (r["target"], r["protocol"], r.get("tls", False),
                                     r["clients"]) == (target, protocol, tls, clients)]
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
    _add_tls_ratios(rows)
    return rows


def _add_prepared_ratios(rows: list[dict]) -> None:
    extended = {(r["target"], r["tls"], r["clients"]): r["tps"] for r in rows
                if r["protocol"] == "extended"}
    for row in rows:
        if row["protocol"] != "prepared":
            continue
        base = extended.get((row["target"], row["tls"], row["clients"]))
        row["tps_vs_extended"] = _quotient(row["tps"], base)


def _add_tls_ratios(rows: list[dict]) -> None:
    plain = {(r["target"], r["protocol"], r["clients"]): r for r in rows if not r["tls"]}
    for row in rows:
        if not row["tls"]:
            continue
        base = plain.get((row["target"], row["protocol"], row["clients"]), {})
        row["tps_vs_plain"] = _quotient(row["tps"], base.get("tps"))
        row["cpu_vs_plain"] = _quotient(row["cpu_s_per_1k_tx"], base.get("cpu_s_per_1k_tx"))


def _quotient(value: float | None, base: float | None) -> float | None:
    return value / base if value and base else None


def _geomean(values: Iterable[float | None]) -> float | None:
    ratios = [v for v in values if v]
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None


def prepared_gain(rows: list[dict]) -> dict[str, dict]:
    """Return, per target, what -M prepared gains over -M extended.

    ``{target: {"by_clients": {clients: ratio}, "geomean": ratio}}`` with ratio =
    prepared TPS / extended TPS, or ``{target: {"unsupported": reason}}``. Empty when
    the run did not include both protocols.
    """
    gains: dict[str, dict] = {}
    for row in rows:
        if row["protocol"] != "prepared" or row["tls"]:
            continue
        if row["status"] == "unsupported":
            gains[row["target"]] = {"unsupported": row["reason"]}
            continue
        entry = gains.setdefault(row["target"], {"by_clients": {}, "geomean": None})
        entry["by_clients"][row["clients"]] = row.get("tps_vs_extended")
    for entry in gains.values():
        entry["geomean"] = _geomean(entry.get("by_clients", {}).values())
    if not any(r["protocol"] == "extended" for r in rows):
        return {}
    return gains


def tls_cost(rows: list[dict]) -> dict[str, dict]:
    """Return, per target, TLS TPS over plain TPS (below 1: what TLS costs).

    ``{target: {"by_protocol": {protocol: {clients: ratio} or {"unsupported": reason}},
    "geomean": ratio}}``, the geometric mean taken over every (protocol, clients) pair
    with a ratio. Empty when the run had no TLS rows.
    """
    cost: dict[str, dict] = {}
    for row in rows:
        if not row["tls"]:
            continue
        entry = cost.setdefault(row["target"], {"by_protocol": {}, "geomean": None})
        if row["status"] == "unsupported":
            entry["by_protocol"][row["protocol"]] = {"unsupported": row["reason"]}
            continue
        entry["by_protocol"].setdefault(row["protocol"], {})[row["clients"]] = (
            row.get("tps_vs_plain"))
    for entry in cost.values():
        entry["geomean"] = _geomean(
            v for per in entry["by_protocol"].values() if "unsupported" not in per
            for v in per.values())
    return cost


def tls_lines(cost: dict[str, dict]) -> list[str]:
    """Return one sentence per target on TLS vs plain TPS, for the summaries."""
    lines = []
    for target, entry in cost.items():
        parts = []
        for protocol, per in entry["by_protocol"].items():
            if "unsupported" in per:
                parts.append(f"{protocol} unsupported")
                continue
            parts.append(f"{protocol}: " + ", ".join(
                f"{c} client{'s' * (int(c) != 1)} {_ratio(v)}" for c, v in per.items()))
        lines.append(f"{target}: TLS/plain TPS {_ratio(entry['geomean'])} "
                     f"(geometric mean; {'; '.join(parts)})")
    return lines


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


def _cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _columns(rows: list[dict]) -> tuple[str, ...]:
    if any(r["tls"] for r in rows):
        return COLUMNS
    return tuple(c for c in COLUMNS if c not in _TLS_COLUMNS)


def _cells(row: dict, columns: tuple[str, ...]) -> list[str]:
    prepared = _ratio(row.get("tps_vs_extended")) if row["protocol"] == "prepared" else ""
    tls = _ratio(row.get("tps_vs_plain")) if row["tls"] else ""
    cells = {"target": row["target"], "protocol": row["protocol"],
             "tls": "on" if row["tls"] else "off", "clients": str(row["clients"])}
    if row["status"] != "ok":
        # "unsupported": never run; "failed": every run failed (see the JSON for why).
        cells.update({"tps": row["status"], "p50 ms": "-", "p99 ms": "-",
                      "cpu s/1k tx": "-", "prepared/extended": "-" if prepared else "",
                      "tls/plain": "-" if tls else ""})
    else:
        tps = _fmt(row["tps"], 0)
        if row["errors"]:
            tps += f" ({row['errors']}/{row['runs']} failed)"
        cells.update({"tps": tps, "p50 ms": _fmt(row["p50_ms"], 3),
                      "p99 ms": _fmt(row["p99_ms"], 3),
                      "cpu s/1k tx": _cpu(row["cpu_s_per_1k_tx"]),
                      "prepared/extended": prepared, "tls/plain": tls})
    return [cells[c] for c in columns]


def _tls_pairs(rows: list[dict]) -> list[list[str]]:
    """Return the TLS table's cells: one line per TLS row, beside its plain row."""
    plain = {(r["target"], r["protocol"], r["clients"]): r for r in rows if not r["tls"]}
    body = []
    for row in rows:
        if not row["tls"]:
            continue
        base = plain.get((row["target"], row["protocol"], row["clients"]))
        sides = (base, row)
        body.append([
            row["target"], row["protocol"], str(row["clients"]),
            *(_fmt(r["tps"], 0) if r and r["status"] == "ok" else r["status"] if r else "n/a"
              for r in sides),
            _ratio(row.get("tps_vs_plain")) if row["status"] == "ok" else "-",
            *(_cpu(r["cpu_s_per_1k_tx"]) if r and r["status"] == "ok" else "-"
              for r in sides),
        ])
    return body


def _aligned(columns: tuple[str, ...], body: list[list[str]], left: int,
             left_last: bool = False) -> str:
    """Return an aligned plain-text table; the first ``left`` columns are left-aligned.

    With ``left_last`` the last column is left-aligned too (free text).
    """
    body = [list(columns), *body]
    widths = [max(len(line[i]) for line in body) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(body):
        cells = [c.ljust(w) if i < left or (left_last and i == len(widths) - 1)
                 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(columns: tuple[str, ...], body: list[list[str]], left: int,
              left_last: bool = False) -> str:
    """Return a GitHub markdown table; the first ``left`` columns are left-aligned.

    With ``left_last`` the last column is left-aligned too (free text).
    """
    right = len(columns) - left - left_last
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join([":---"] * left + ["---:"] * right + [":---"] * left_last) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    """Return the median rows as an aligned plain-text table."""
    columns = _columns(rows)
    return _aligned(columns, [_cells(r, columns) for r in rows], columns.index("clients"))


def markdown_table(rows: list[dict]) -> str:
    """Return the median rows as a GitHub markdown table (numbers right-aligned)."""
    columns = _columns(rows)
    return _markdown(columns, [_cells(r, columns) for r in rows], columns.index("clients"))


def tls_text_table(rows: list[dict]) -> str:
    """Return plain and TLS TPS side by side, with their ratio, as plain text."""
    return _aligned(TLS_COLUMNS, _tls_pairs(rows), 2)


def tls_markdown_table(rows: list[dict]) -> str:
    """Return plain and TLS TPS side by side, with their ratio, as markdown."""
    return _markdown(TLS_COLUMNS, _tls_pairs(rows), 2)


def markdown_report(doc: dict) -> str:
    """Return latest.md: how the numbers were taken, the table, then prepared vs extended."""
    m, s = doc["machine"], doc["settings"]
    skipped = "".join(f"\n- {t} skipped: {why}" for t, why in doc["skipped_targets"].items())
    gains = "".join(f"\n- {line}" for line in gain_lines(doc.get("prepared_vs_extended", {})))
    if gains:
        gains = ("\n\nWhat `-M prepared` gains over `-M extended` (ratio of median TPS):"
                 f"\n{gains}")
    tls = ""
    if doc.get("tls_cost"):
        lines = "".join(f"\n- {line}" for line in tls_lines(doc["tls_cost"]))
        tls = ("\n\nTLS between pgbench and the target against plain TCP (TLS rows: "
               f"{s['tls']}):\n\n{tls_markdown_table(doc['median'])}\n{lines}")
    notes = []
    if s.get("ecluse_workers"):
        notes.append(f"ecluse-wN is ecluse with workers = N (here ecluse-w1 and "
                     f"ecluse-w{s['ecluse_workers']})")
    if s.get("churn_clients"):
        notes.append("Churn is -M simple -C, a new connection per transaction")
    if m.get("loadavg_start"):
        notes.append("Load average {:.1f} before, {:.1f} after".format(
            m["loadavg_start"][0], m["loadavg_end"][0]))
    extra = "".join(f" {n}." for n in notes)
    return (
        f"pgbench -S (select-only), {s['duration_s']} s per run, median of "
        f"{s['repeat']} interleaved runs, scale {s['scale']}, pool size {s['pool_size']}; "
        f"{doc['date']} on {m['nproc']} cores ({m['cpu_model']}), PostgreSQL "
        f"{m['postgres_version']}, {m['pgbouncer_version'] or 'PgBouncer n/a'}, "
        f"{m['ecluse_version'] or 'ecluse n/a'}. "
        "cpu s/1k tx is the pooler's CPU seconds per 1,000 transactions; "
        "prepared/extended is a prepared row's TPS over the extended row's"
        + ("; tls/plain a TLS row's TPS over the plain row's." if doc.get("tls_cost")
           else ".")
        + f"{extra}{skipped}{_goals_md(doc)}\n\n{markdown_table(doc['median'])}{gains}{tls}"
        + f"{_idle_md(doc)}\n"
    )


def _goals_md(doc: dict) -> str:
    if not doc.get("goals"):
        return ""
    lines = "".join(f"\n- **{g['status']}**: {g['text']}" for g in doc["goals"])
    return f"\n\nGoals of issue 6 (medians of this run):\n{lines}"


def _idle_md(doc: dict) -> str:
    if not doc.get("idle"):
        return ""
    return ("\n\nMemory of the pooler holding idle logged-in clients (sum over its "
            "processes; PSS counts a page shared by several processes once; "
            "KB/client is the growth over the pooler's memory before the clients came, "
            "divided by the clients reached):\n\n" + idle_markdown_table(doc["idle"]))


def write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def plot(path: str, doc: dict) -> None:
    """Draw TPS against clients: one subplot per protocol, one line per target, log x.

    TLS rows are dashed lines in their target's colour. A target that cannot run a
    protocol is named in that panel instead of drawn. The panels share one y scale,
    except churn's: a connection per transaction runs an order of magnitude slower.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    s = doc["settings"]
    protocols, targets = s["protocols"], s["targets"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 4.5),
                             squeeze=False)
    handles = {}
    tops: dict[str, float] = {}
    for ax, protocol in zip(axes[0], protocols, strict=True):
        top = 0.0
        notes = []
        for target, tls in [(t, tls) for t in targets for tls in (False, True)]:
            label = f"{target} + TLS" if tls else target
            color = target_color(target)
            rows = [r for r in doc["median"] if r["target"] == target
                    and r["protocol"] == protocol and r.get("tls", False) == tls]
            if not rows and tls:
                continue  # TLS not measured with this protocol
            if any(r["status"] == "unsupported" for r in rows):
                if not tls:
                    notes.append(f"{target}: unsupported")
                continue
            rows = [r for r in rows if r["tps"] is not None]
            if not rows:
                notes.append(f"{label}: no result")
                continue
            (line,) = ax.plot([r["clients"] for r in rows], [r["tps"] for r in rows],
                              marker="o", label=label, color=color,
                              linestyle="--" if tls else "-", markerfacecolor=(
                                  "white" if tls else None))
            handles.setdefault(label, line)
            raw = [r for r in doc["runs"] if r["target"] == target
                   and r["protocol"] == protocol and r.get("tls", False) == tls
                   and r["tps"] is not None and not r.get("error")]
            ax.scatter([r["clients"] for r in raw], [r["tps"] for r in raw],
                       s=10, alpha=0.35, color=line.get_color())
            top = max(top, *(r["tps"] for r in rows), *(r["tps"] for r in raw))
        tops[protocol] = top
        if notes:
            ax.text(0.03, 0.03, "\n".join(notes), transform=ax.transAxes, fontsize=9,
                    color="0.35", va="bottom")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["clients"] for r in doc["median"]
                              if r["protocol"] == protocol} or set(s["clients"])))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("pgbench clients")
        ax.set_title(_PANEL_TITLES.get(protocol, f"pgbench -S -M {protocol}"))
        ax.grid(True, which="major", alpha=0.3)
    # After every panel is drawn, since the shared top needs all of their data.
    shared = max((t for p, t in tops.items() if p != "churn"), default=0.0)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        ax.set_ylim(0, (tops[protocol] if protocol == "churn" else shared) * 1.08 or 1)
    axes[0][0].set_ylabel("transactions per second (median)")
    ordered = [label for t in targets for label in (t, f"{t} + TLS") if label in handles]
    axes[0][-1].legend([handles[t] for t in ordered], ordered, loc="best")
    m = doc["machine"]
    tls = ", dashed: TLS" if doc.get("tls_cost") else ""
    fig.suptitle(f"ecluse vs PgBouncer vs direct - {doc['date']}, {m['nproc']} cores, "
                 f"{s['duration_s']} s x {s['repeat']}, pool size {s['pool_size']}{tls}")
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
    # An idle-clients-only run has no TPS to plot.
    if doc["settings"]["protocols"] and _plot_or_say(dated_png, doc):
        shutil.copyfile(dated_png, os.path.join(results_dir, "latest.png"))
        written += [dated_png, os.path.join(results_dir, "latest.png")]
    with open(latest_md, "w", encoding="utf-8") as f:
        f.write(markdown_report(doc))
    return [*written, latest_md]


def _plot_or_say(path: str, doc: dict) -> bool:
    """Draw the plot; without matplotlib say how to get it and return False."""
    try:
        plot(path, doc)
    except ImportError as exc:
        print(f"bench: no plot ({exc}); install the bench extra: pip install -e '.[bench]'")
        return False
    return True


def _mb(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:,.1f}"


def _idle_cells(row: dict) -> list[str]:
    after, before = row.get("after") or {}, row.get("before") or {}
    per = {}
    for key in ("rss_kb", "pss_kb"):
        grown = (after.get(key) - before.get(key)
                 if after.get(key) is not None and before.get(key) is not None else None)
        per[key] = (_fmt(grown / row["reached"], 1)
                    if grown is not None and row.get("reached") else "n/a")
    return [row["target"], f"{row['asked']:,}", f"{row.get('reached', 0):,}",
            str(after.get("processes", "n/a")), _mb(after.get("rss_kb")),
            _mb(after.get("pss_kb")), per["rss_kb"], per["pss_kb"],
            _fmt(row.get("ramp_s"), 1), row.get("why") or row.get("error") or ""]


def idle_text_table(rows: list[dict]) -> str:
    """Return the idle-client memory rows as an aligned plain-text table."""
    return _aligned(IDLE_COLUMNS, [_idle_cells(r) for r in rows], 1, left_last=True)


def idle_markdown_table(rows: list[dict]) -> str:
    """Return the idle-client memory rows as a GitHub markdown table."""
    return _markdown(IDLE_COLUMNS, [_idle_cells(r) for r in rows], 1, left_last=True)


README_START = "<!-- bench:latest:start -->"
README_END = "<!-- bench:latest:end -->"


def readme_section(doc: dict, image: str) -> str:
    """Return what goes between the README's markers: the plot, then latest.md."""
    return (f"![TPS against pgbench clients, one panel per protocol, churn with its own "
            f"scale; TLS dashed]({image})\n\n{markdown_report(doc)}")


def update_readme(path: str, doc: dict, image: str) -> bool:
    """Replace the text between README_START and README_END in ``path``.

    Returns False, changing nothing, when the file or either marker is missing.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return False
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = (text[:start + len(README_START)] + "\n" + readme_section(doc, image)
           + "\n" + text[end:])
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return True
