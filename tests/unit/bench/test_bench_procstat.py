"""Memory and limits of a process tree, read from /proc for this very process."""

from __future__ import annotations

import os
import resource

import procstat


def test_tree_memory_of_ourselves():
    mem = procstat.tree_memory_kb(os.getpid())
    assert mem is not None
    assert mem["processes"] >= 1
    assert mem["rss_kb"] > 1000


def test_gone_process_has_no_memory():
    assert procstat.tree_memory_kb(2**22 + 12345) is None


def test_open_files_limit_matches_getrlimit():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    expected = None if soft == resource.RLIM_INFINITY else soft
    assert procstat.open_files_limit(os.getpid()) == expected
