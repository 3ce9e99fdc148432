"""A line-oriented reader of PgBouncer's ini format that remembers where every key came from.

The format: ``[section]`` headers (case-insensitive; ``[ecluse]`` is a synonym
of ``[pgbouncer]``), ``key = value`` lines, whole-line comments starting with
``;`` or ``#``, blank lines and ``%include path``. Values run to the end of the
line and are stripped; there are no inline comments, because PgBouncer has none
and a ``#`` inside a password must survive. Keys are lower-cased in
``[pgbouncer]`` only: elsewhere they are database and user names.

``%include`` works like textual inclusion, as in PgBouncer: the included file
starts in the current section and a section it opens stays open afterwards.
A relative path is taken from the directory of the including file.

This module only reads text; what the keys mean is loader.py's business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ecluse.errors import ConfigError

# Sections whose keys are setting names rather than database or user names.
_CASE_INSENSITIVE_KEYS = frozenset({"pgbouncer"})
_SECTION_SYNONYMS = {"ecluse": "pgbouncer"}
_INCLUDE = "%include"


@dataclass(frozen=True, slots=True)
class IniEntry:
    """One ``key = value`` line; ``section`` is the canonical lower-case section name."""

    section: str
    key: str
    value: str
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class IniSection:
    """One ``[section]`` header, kept so that unknown sections can be reported."""

    name: str
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class IniDocument:
    """Every entry and header of an ini file and its includes, in reading order."""

    entries: tuple[IniEntry, ...]
    sections: tuple[IniSection, ...]

    def section(self, name: str) -> tuple[IniEntry, ...]:
        """Return the entries of section ``name`` (canonical name), in order."""
        return tuple(entry for entry in self.entries if entry.section == name)


def read_ini(path: str) -> IniDocument:
    """Read the ini file at ``path`` with its includes.

    Raises ConfigError if a file cannot be read or a line is malformed.
    """
    try:
        text = _read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {_reason(exc)}", path=path) from None
    return parse_ini(text, path)


def parse_ini(text: str, path: str = "<string>") -> IniDocument:
    """Parse ini ``text`` that came from ``path`` (used for messages and includes).

    A ``path`` that is not a real file (such as "<string>") resolves includes
    from the current directory. Raises ConfigError naming the file and line.
    """
    reader = _Reader()
    if os.path.isfile(path):
        reader.stack.append(os.path.realpath(path))
    reader.feed(text, path)
    return IniDocument(tuple(reader.entries), tuple(reader.sections))


class _Reader:
    """The state of one read: current section and the chain of open includes."""

    def __init__(self) -> None:
        self.entries: list[IniEntry] = []
        self.sections: list[IniSection] = []
        self.section: str | None = None
        self.stack: list[str] = []  # real paths of the files being read, for cycle detection

    def feed(self, text: str, path: str) -> None:
        # split("\n") rather than splitlines(): the latter also breaks on
        # characters such as \x0b or \x1c that may legally appear in a value.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line[0] in ";#":
                continue
            if line.startswith("["):
                self._open_section(line, path, number)
            elif _is_include(line):
                self._include(line[len(_INCLUDE) :].strip(), path, number)
            else:
                self._add_entry(line, path, number)

    def _open_section(self, line: str, path: str, number: int) -> None:
        if not line.endswith("]"):
            raise ConfigError(f"malformed section header {line!r}", path=path, line=number)
        name = line[1:-1].strip().lower()
        if not name:
            raise ConfigError("empty section name", path=path, line=number)
        name = _SECTION_SYNONYMS.get(name, name)
        self.section = name
        self.sections.append(IniSection(name, path, number))

    def _add_entry(self, line: str, path: str, number: int) -> None:
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"expected 'key = value', got {line!r}", path=path, line=number)
        if not key:
            raise ConfigError(f"missing key before '=' in {line!r}", path=path, line=number)
        if self.section is None:
            raise ConfigError(f"key {key!r} outside of any [section]", path=path, line=number)
        if self.section in _CASE_INSENSITIVE_KEYS:
            key = key.lower()
        self.entries.append(IniEntry(self.section, key, value.strip(), path, number))

    def _include(self, target: str, path: str, number: int) -> None:
        if not target:
            raise ConfigError("%include needs a file name", path=path, line=number)
        base = os.path.dirname(path) if os.path.isfile(path) else os.getcwd()
        full = os.path.join(base, target)
        real = os.path.realpath(full)
        if real in self.stack:
            raise ConfigError(f"%include {target!r}: include cycle", path=path, line=number)
        try:
            text = _read_text(full)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"%include {target!r}: cannot read: {_reason(exc)}", path=path, line=number
            ) from None
        self.stack.append(real)
        try:
            self.feed(text, full)
        finally:
            self.stack.pop()


def _is_include(line: str) -> bool:
    head = line[: len(_INCLUDE)].lower()
    rest = line[len(_INCLUDE) : len(_INCLUDE) + 1]
    return head == _INCLUDE and (rest == "" or rest.isspace())


def _read_text(path: str) -> str:
    # utf-8-sig drops a byte-order mark that some editors write.
    with open(path, encoding="utf-8-sig") as f:
        return f.read()


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
