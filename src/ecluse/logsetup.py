"""Logging: the root logger's level, line formats (text, JSON) and destinations.

This module owns every handler ecluse puts on the root logger: stderr, the
``logfile`` and syslog. ``configure()`` sets them up once at startup with the
command-line flags; ``apply()`` re-applies the settings after a config reload
(level, format, logfile and syslog change without a restart);
``reopen_logfiles()`` reopens the logfile after logrotate has moved it (SIGHUP).

Rules:
1. Only this module adds or removes handlers on the root logger, and it only
   ever touches the handlers it made (a test's capture handler stays).
2. A JSON record is exactly one line of valid JSON, whatever the message holds.
3. Call sites give structured fields with ``extra={...}``: the JSON format
   writes them as fields, the text format appends them as ``key=value``.
4. No ecluse imports beyond config: logging is set up before anything runs.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ecluse.config.model import LogFormat, LogLevel, Settings

log = logging.getLogger("ecluse")

_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}

# Attributes every LogRecord has; anything else on a record came from extra=.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}
_CORE_FIELDS = ("ts", "level", "logger", "pid", "msg")

# Characters json.dumps(ensure_ascii=False) leaves raw but that str.splitlines()
# and some log shippers treat as line breaks, and lone surrogates (a name decoded
# with surrogateescape) that a UTF-8 stream cannot encode. Escaping them keeps
# rule 2 while other non-ASCII text stays readable.
_UNSAFE = re.compile("[\x85\u2028\u2029\ud800-\udfff]")

_TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(message)s"
# syslog stamps the time itself, and the ident carries the pid.
_SYSLOG_TEXT_FORMAT = "%(levelname)s %(message)s"


def _escape_unsafe(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields a call site passed with extra=."""
    return {key: value for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRS and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: ts, level, logger, pid, msg, then extras.

    ``ts`` is ISO 8601 in UTC with milliseconds. An extra field named like a
    core field is dropped rather than allowed to overwrite it. An exception
    goes in ``exc`` and a stack in ``stack``, as text.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            # Cached on the record as logging.Formatter does, for other handlers.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        text = json.dumps(out, ensure_ascii=False, default=str)
        return _UNSAFE.sub(_escape_unsafe, text)


class TextFormatter(logging.Formatter):
    """The classic line, then any extra fields as ``key=value`` (quoted when needed)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extra_fields(record)
        if not extras:
            return line
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in extras.items())
        # On the message line, not after a traceback.
        head, sep, tail = line.partition("\n")
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(ch.isspace() or ch in "\"=" for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class SyslogFormatter(logging.Formatter):
    """Prefix another formatter's line with ``ident[pid]: ``, the traditional syslog tag.

    The pid is taken from each record rather than fixed at setup, because
    ``-d`` forks after logging is configured.
    """

    def __init__(self, inner: logging.Formatter, ident: str):
        super().__init__()
        self.inner = inner
        self.ident = ident

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.ident}[{record.process}]: {self.inner.format(record)}"


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler that can reopen its file by name after logrotate renamed it."""

    def reopen(self) -> None:
        """Close the current stream and open the path again (creating a new file).

        Raises OSError if the file cannot be opened; the handler then has no
        stream and opens the file again on its next record.
        """
        self.acquire()
        try:
            stream, self.stream = self.stream, None  # type: ignore[assignment]
            if stream is not None:
                try:
                    stream.flush()
                finally:
                    stream.close()
            self.stream = self._open()
        finally:
            self.release()


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    """Return the formatter for stderr and the logfile."""
    if log_format is LogFormat.JSON:
        return JsonFormatter()
    return TextFormatter(_TEXT_FORMAT)


def make_syslog_handler(ident: str, facility: str, log_format: LogFormat,
                        address: str | tuple[str, int] | None = None,
                        ) -> logging.handlers.SysLogHandler:
    """Return a SysLogHandler for ``facility`` whose lines start with ``ident[pid]:``.

    ``address`` None means /dev/log when it exists and accepts us, else UDP
    localhost:514, as syslog(3) would.
    """
    code = logging.handlers.SysLogHandler.facility_names[facility]
    handler: logging.handlers.SysLogHandler | None = None
    if address is None and os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler("/dev/log", facility=code)
        except OSError:
            handler = None  # a stale socket with no daemon behind it: try UDP
    if handler is None:
        handler = logging.handlers.SysLogHandler(address or ("localhost", 514), facility=code)
    inner = (JsonFormatter() if log_format is LogFormat.JSON
             else TextFormatter(_SYSLOG_TEXT_FORMAT))
    handler.setFormatter(SyslogFormatter(inner, ident))
    return handler


def resolve_level(settings: Settings, verbose: int = 0, quiet: bool = False) -> int:
    """Return the level: log_level if set, else WARNING for -q, DEBUG for -v/verbose, INFO."""
    if settings.log_level is not None:
        return _LEVELS[settings.log_level]
    if quiet:
        return logging.WARNING
    if verbose or settings.verbose:
        return logging.DEBUG
    return logging.INFO


@dataclass
class _LogState:
    """What configure() was told on the command line, and the handlers made since."""

    verbose: int = 0
    quiet: bool = False
    daemon: bool = False
    stderr: logging.Handler | None = None
    file: ReopenableFileHandler | None = None
    syslog: logging.handlers.SysLogHandler | None = None
    syslog_key: tuple[str, str, LogFormat] | None = None
    handlers: list[logging.Handler] = field(default_factory=list)


_state = _LogState()


def configure(settings: Settings, *, verbose: int = 0, quiet: bool = False,
              daemon: bool = False) -> None:
    """Set up logging at startup from the settings and the -v, -q and -d flags.

    The flags are kept for later apply() calls. Without a logfile or syslog,
    lines go to stderr; with -d and either of them, not to stderr (it becomes
    /dev/null). Raises OSError if the logfile cannot be opened.
    """
    _state.verbose, _state.quiet, _state.daemon = verbose, quiet, daemon
    _apply(settings, strict=True)


def flags() -> dict[str, Any]:
    """The -v, -q and -d flags configure() was given: a worker started by exec needs them."""
    return {"verbose": _state.verbose, "quiet": _state.quiet, "daemon": _state.daemon}


def apply(settings: Settings) -> None:
    """Re-apply the logging settings after a reload: level, format, logfile, syslog.

    Must be called after configure(). A logfile that cannot be opened is
    logged as an error and the previous destination kept, so a bad reload
    never silences the pooler.
    """
    _apply(settings, strict=False)


def reopen_logfiles() -> None:
    """Reopen the logfile by name, after logrotate moved it away (SIGHUP).

    Does nothing without a logfile. A failure to reopen is logged, not raised:
    the caller is a signal handler.
    """
    handler = _state.file
    if handler is None:
        return
    try:
        handler.reopen()
    except OSError as exc:
        log.error("cannot reopen logfile %s: %s", handler.baseFilename, exc)


def remove_handlers() -> None:
    """Close and remove every handler this module added (tests, and exit)."""
    root = logging.getLogger()
    for handler in _state.handlers:
        root.removeHandler(handler)
        handler.close()
    _state.stderr = _state.file = _state.syslog = None
    _state.syslog_key = None
    _state.handlers = []


def _apply(settings: Settings, *, strict: bool) -> None:
    formatter = make_formatter(settings.log_format)
    _apply_file(settings.logfile, strict)
    _apply_syslog(settings)
    to_stderr = not _state.daemon or not (_state.file or _state.syslog)
    if to_stderr and _state.stderr is None:
        _state.stderr = logging.StreamHandler(sys.stderr)
    elif not to_stderr and _state.stderr is not None:
        _state.stderr.close()
        _state.stderr = None
    for handler in (_state.stderr, _state.file):
        if handler is not None:
            handler.setFormatter(formatter)
    wanted = [h for h in (_state.stderr, _state.file, _state.syslog) if h is not None]
    root = logging.getLogger()
    for handler in _state.handlers:
        if handler not in wanted:
            root.removeHandler(handler)
    for handler in wanted:
        if handler not in root.handlers:
            root.addHandler(handler)
    _state.handlers = wanted
    root.setLevel(resolve_level(settings, _state.verbose, _state.quiet))


def _apply_file(logfile: str | None, strict: bool) -> None:
    current = _state.file
    if current is not None and logfile is not None and \
            current.baseFilename == os.path.abspath(logfile):
        return
    new: ReopenableFileHandler | None = None
    if logfile is not None:
        try:
            new = ReopenableFileHandler(logfile, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            if strict:
                raise
            log.error("cannot open logfile %s: %s; still logging to %s", logfile, exc,
                      current.baseFilename if current is not None else "the same places")
            return
    if current is not None:
        current.close()
    _state.file = new


def _apply_syslog(settings: Settings) -> None:
    key = ((settings.syslog_ident, settings.syslog_facility, settings.log_format)
           if settings.syslog else None)
    if key == _state.syslog_key:
        return
    if _state.syslog is not None:
        _state.syslog.close()
        _state.syslog = None
    if key is not None:
        _state.syslog = make_syslog_handler(*key)
    _state.syslog_key = key
