"""CPU time and memory of a process tree, read from /proc (Linux only).

A pooler may fork workers and PostgreSQL forks a backend per connection, so the
CPU we charge to a process is the sum over the process and all its living
descendants of utime + stime + cutime + cstime. Counting the reaped-children
fields too keeps the sum steady when a child exits between two readings: its
time moves from its own utime/stime into its parent's cutime/cstime.

Memory is summed over the same tree (an ecluse with several workers is a
supervisor and its forked children): RSS, which counts a page shared by two
processes twice, and PSS, which splits it between them and so adds up to what
the tree really holds.

Rules:
1. Standard library only; nothing here imports ecluse.
2. A process that vanishes while we read is skipped, never an error.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_stat(pid: int) -> tuple[int, int] | None:
    """Return (ppid, cpu ticks) for ``pid``, or None if it has gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself contain spaces or ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3]: ppid 4, utime 14 .. cstime 17.
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ppid, ticks


def descendants(pid: int) -> list[int]:
    """Return the pids of all living descendants of ``pid`` (children first)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read_stat(int(name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """Return the CPU seconds used so far by ``pid`` and its descendants, None if it has gone."""
    own = _read_stat(pid)
    if own is None:
        return None
    ticks = own[1]
    for child in descendants(pid):
        stat = _read_stat(child)
        if stat is not None:
            ticks += stat[1]
    return ticks / CLK_TCK


def process_memory_kb(pid: int) -> tuple[int, int | None] | None:
    """Return (RSS, PSS) of ``pid`` in KiB, PSS None where smaps_rollup is unreadable.

    Returns None if the process has gone.
    """
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    if rss is None:
        # Older kernels, or another user's process without CAP_SYS_PTRACE: statm still works.
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            return None
    return rss, pss


def tree_memory_kb(pid: int) -> dict | None:
    """Return the memory of ``pid`` and its descendants, None if ``pid`` has gone.

    ``{"processes": n, "rss_kb": sum, "pss_kb": sum or None}``; PSS is None as soon
    as one process's is unreadable, since a partial sum would mislead.
    """
    own = process_memory_kb(pid)
    if own is None:
        return None
    found = [own]
    for child in descendants(pid):
        mem = process_memory_kb(child)
        if mem is not None:
            found.append(mem)
    pss = [m[1] for m in found]
    return {"processes": len(found), "rss_kb": sum(m[0] for m in found),
            "pss_kb": None if None in pss else sum(p for p in pss if p is not None)}


def open_files_limit(pid: int) -> int | None:
    """Return the soft RLIMIT_NOFILE of ``pid`` from /proc/<pid>/limits, None if unknown."""
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None
