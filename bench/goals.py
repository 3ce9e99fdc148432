"""The performance goals of issue 6, checked against one run's medians.

Each goal compares ecluse with PgBouncer measured in the same run (or, for idle
clients, with a fixed count) and comes out "met", "not met" or "not measured"
(the run lacked a row it needs, or a row failed). Goals:

1. ecluse with N workers: TPS at 100 and at 500 clients at least 1.2 x PgBouncer's;
2. ecluse with 1 worker: pooler CPU per transaction at most 1.5 x PgBouncer's
   (geometric mean of the ratio over the client counts both have);
3. ecluse holds 100,000 idle logged-in clients (each ecluse target; and the
   idle-only ecluse target, whose workers each stay under the hard descriptor
   limit, when run.py starts one);
4. ecluse with N workers: TPS under connection churn (pgbench -C) at least
   PgBouncer's, at each churn client count.

Throughput and CPU goals use plain (non-TLS) ``-M simple`` rows: the protocol
every target runs, PgBouncer 1.18 included.

Rules:
1. Pure functions over the dicts run.py builds; nothing here measures.
2. A goal without its numbers is "not measured", never "met".
"""

from __future__ import annotations

import math

TPS_FACTOR = 1.2
TPS_CLIENTS = (100, 500)
CPU_FACTOR = 1.5
IDLE_GOAL = 100_000
CHURN_FACTOR = 1.0
PROTOCOL = "simple"
CHURN = "churn"
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


def _row(rows: list[dict], target: str, protocol: str, clients: int) -> dict | None:
    for row in rows:
        if ((row["target"], row["protocol"], row.get("tls", False), row["clients"])
                == (target, protocol, False, clients) and row.get("status") == "ok"):
            return row
    return None


def _goal(text: str, status: str, **figures) -> dict:
    return {"text": text, "status": status, **figures}


def _verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def tps_goals(rows: list[dict], ecluse: str, pgbouncer: str = "pgbouncer",
              protocol: str = PROTOCOL, clients: tuple[int, ...] = TPS_CLIENTS,
              factor: float = TPS_FACTOR, what: str = "TPS") -> list[dict]:
    """Return one goal per client count: ``ecluse`` TPS >= ``factor`` x PgBouncer's."""
    mode = "-M simple -C" if protocol == CHURN else f"-M {protocol}"
    goals = []
    for c in clients:
        ours, theirs = _row(rows, ecluse, protocol, c), _row(rows, pgbouncer, protocol, c)
        head = f"{ecluse} {what} at {c} clients ({mode}) >= {factor:g} x {pgbouncer}"
        if not ours or not theirs or not ours.get("tps") or not theirs.get("tps"):
            goals.append(_goal(f"{head}: no numbers for both in this run", NOT_MEASURED,
                               clients=c))
            continue
        need = factor * theirs["tps"]
        ratio = ours["tps"] / theirs["tps"]
        goals.append(_goal(
            f"{head}: {ours['tps']:,.0f} vs {factor:g} x {theirs['tps']:,.0f} = {need:,.0f} "
            f"({ratio:.2f}x {pgbouncer})", _verdict(ours["tps"] >= need), clients=c,
            value=ours["tps"], reference=theirs["tps"], ratio=ratio))
    return goals


def cpu_goal(rows: list[dict], ecluse: str, pgbouncer: str = "pgbouncer",
             protocol: str = PROTOCOL, factor: float = CPU_FACTOR) -> dict:
    """Return the goal ``ecluse`` CPU/transaction <= ``factor`` x PgBouncer's (geomean)."""
    head = (f"{ecluse} CPU per transaction (-M {protocol}) <= {factor:g} x {pgbouncer} "
            "(geometric mean over client counts)")
    per: dict[int, tuple[float, float]] = {}
    for row in rows:
        if row["target"] != ecluse or row["protocol"] != protocol or row.get("tls"):
            continue
        ours = _row(rows, ecluse, protocol, row["clients"])
        theirs = _row(rows, pgbouncer, protocol, row["clients"])
        if (ours and theirs and ours.get("cpu_s_per_1k_tx")
                and theirs.get("cpu_s_per_1k_tx")):
            per[row["clients"]] = (ours["cpu_s_per_1k_tx"], theirs["cpu_s_per_1k_tx"])
    if not per:
        return _goal(f"{head}: no numbers for both in this run", NOT_MEASURED)
    ratio = math.exp(sum(math.log(a / b) for a, b in per.values()) / len(per))
    detail = ", ".join(f"{c} clients {a * 1000:.0f} vs {b * 1000:.0f} µs"
                       for c, (a, b) in sorted(per.items()))
    return _goal(f"{head}: {ratio:.2f}x ({detail})", _verdict(ratio <= factor),
                 ratio=ratio, by_clients={c: {"us": a * 1000, "reference_us": b * 1000}
                                          for c, (a, b) in per.items()})


def idle_goals(idle: list[dict], ecluse_targets: list[str],
               goal: int = IDLE_GOAL) -> list[dict]:
    """Return, per ecluse target, whether it held ``goal`` idle clients at once."""
    goals = []
    for target in ecluse_targets:
        rows = [r for r in idle if r["target"] == target]
        head = f"{target} holds {goal:,} idle clients"
        tried = [r for r in rows if r["asked"] >= goal]
        best = max(rows, key=lambda r: r.get("reached", 0), default=None)
        if best is None or (not tried and best.get("reached", 0) < goal):
            most = f"; most held {best.get('reached', 0):,}" if best else ""
            goals.append(_goal(f"{head}: not tried in this run{most}", NOT_MEASURED))
            continue
        reached = best.get("reached", 0)
        why = f" ({best['why']})" if reached < goal and best.get("why") else ""
        goals.append(_goal(f"{head}: held {reached:,}{why}", _verdict(reached >= goal),
                           value=reached))
    return goals


def all_goals(rows: list[dict], idle: list[dict], ecluse_1: str, ecluse_n: str,
              churn_clients: list[int], idle_only: list[str] = ()) -> list[dict]:
    """Return every goal of issue 6 for this run, in the order the issue lists them."""
    ecluse_targets = list(dict.fromkeys([ecluse_1, ecluse_n, *idle_only]))
    return [
        *tps_goals(rows, ecluse_n),
        cpu_goal(rows, ecluse_1),
        *idle_goals(idle, ecluse_targets),
        *tps_goals(rows, ecluse_n, protocol=CHURN, clients=tuple(churn_clients),
                   factor=CHURN_FACTOR, what="churn TPS"),
    ]


def goal_lines(goals: list[dict]) -> list[str]:
    """Return one line per goal, its status first."""
    return [f"[{g['status']}] {g['text']}" for g in goals]
