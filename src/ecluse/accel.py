"""Compiled accelerators: which are built, which are in use, and the switch that
turns them off.

A few byte scans on the per-transaction path have a Cython twin (a ``.pyx``
beside the pure-Python module), built by ``pip install`` when a C compiler is
there and skipped when not (setup.py marks them optional). Each user picks its
function once, at import, with ``pick``: the compiled one when it is built
and ``ECLUSE_NO_EXTENSIONS`` is unset (or ``0``), else the pure one, which
stays the reference: tests/unit/test_accel.py checks that both agree on
generated input.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

DISABLED = os.environ.get("ECLUSE_NO_EXTENSIONS", "") not in ("", "0")
# Module names, in the order they were asked for.
IN_USE: list[str] = []
NOT_BUILT: list[str] = []


def load(module: str):
    """The compiled module ``module``, or None when it is not built."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def pick(pure: F, module: str, name: str | None = None) -> F:
    """The function ``name`` (by default named as ``pure``) from the compiled
    ``module``, or ``pure`` itself when that is not built or accelerators are
    turned off."""
    compiled = None if DISABLED else load(module)
    if compiled is None:
        if not DISABLED and module not in NOT_BUILT:
            NOT_BUILT.append(module)
        return pure
    if module not in IN_USE:
        IN_USE.append(module)
    return getattr(compiled, name or pure.__name__)


def describe() -> str:
    """One line for the startup log."""
    if DISABLED:
        return "compiled accelerators turned off (ECLUSE_NO_EXTENSIONS): pure Python"
    if not NOT_BUILT:
        return f"compiled accelerators in use: {', '.join(IN_USE) or 'none'}"
    return (f"compiled accelerators not built: {', '.join(NOT_BUILT)} (pure Python there; "
            "pip install with a C compiler builds them)")
