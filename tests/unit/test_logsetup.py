"""Tests for ecluse.logsetup: the JSON and text formats, levels, logfile reopen, syslog."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse import logsetup
from ecluse.config import config_from_string
from ecluse.config.model import LogFormat, LogLevel, Settings
from ecluse.errors import ConfigError


def make_record(msg: str = "hello %s", args: tuple = ("world",), *, level: int = logging.INFO,
                exc_info=None, extra: dict | None = None) -> logging.LogRecord:
    """Build a record the way Logger.makeRecord does, extras included."""
    logger = logging.getLogger("ecluse.test")
    return logger.makeRecord(logger.name, level, __file__, 1, msg, args, exc_info,
                             extra=extra)


def parse_one_line(text: str) -> dict:
    assert len(text.splitlines()) == 1 and "\n" not in text and "\r" not in text
    return json.loads(text)


# --- JSON format ---------------------------------------------------------------

def test_json_line_has_the_core_fields() -> None:
    out = parse_one_line(logsetup.JsonFormatter().format(make_record()))
    assert out["msg"] == "hello world"
    assert out["level"] == "info"
    assert out["logger"] == "ecluse.test"
    assert out["pid"] == os.getpid()
    ts = datetime.datetime.fromisoformat(out["ts"])
    assert ts.utcoffset() == datetime.timedelta(0)
    assert out["ts"].endswith("Z")
    assert abs((datetime.datetime.now(datetime.UTC) - ts).total_seconds()) < 3600


def test_json_line_carries_extra_fields_without_overwriting_core_ones() -> None:
    record = make_record(extra={"client": "1.2.3.4:5", "sqlstate": "3D000", "count": 3,
                                "level": "forged", "obj": object()})
    out = parse_one_line(logsetup.JsonFormatter().format(record))
    assert out["client"] == "1.2.3.4:5"
    assert out["sqlstate"] == "3D000"
    assert out["count"] == 3
    assert out["level"] == "info"  # a call site cannot forge a core field
    assert out["obj"].startswith("<object object")  # not JSON-able: as text


def test_json_line_includes_the_exception() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        record = make_record("failed", (), level=logging.ERROR, exc_info=sys.exc_info())
    out = parse_one_line(logsetup.JsonFormatter().format(record))
    assert out["msg"] == "failed"
    assert out["level"] == "error"
    assert "Traceback" in out["exc"] and "ZeroDivisionError" in out["exc"]


_text = st.text(max_size=200)


@given(msg=_text, arg=_text, extra=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                                   _text, max_size=3))
def test_json_is_always_one_line_of_valid_json(msg: str, arg: str, extra: dict) -> None:
    extra = {k: v for k, v in extra.items() if k not in logsetup._RECORD_ATTRS}
    record = make_record(msg.replace("%", "%%") + " %s", (arg,), extra=extra)
    text = logsetup.JsonFormatter().format(record)
    out = parse_one_line(text)
    assert out["msg"] == msg + " " + arg
    for key, value in extra.items():
        if key not in logsetup._CORE_FIELDS:
            assert out[key] == value


@given(msg=_text)
def test_json_with_an_exception_is_one_line(msg: str) -> None:
    try:
        raise ValueError(msg)
    except ValueError:
        record = make_record("boom", (), exc_info=sys.exc_info())
    out = parse_one_line(logsetup.JsonFormatter().format(record))
    assert "ValueError" in out["exc"]


def test_json_escapes_line_separators_and_lone_surrogates() -> None:
    msg = "a\u2028b\u2029c\x85d\udcffe"
    text = logsetup.JsonFormatter().format(make_record(msg, ()))
    assert "\\u2028" in text and "\\udcff" in text
    assert json.loads(text)["msg"] == msg
    text.encode("utf-8")  # writable to a UTF-8 stream: no lone surrogate left raw
    assert len(text.splitlines()) == 1


def test_json_keeps_other_non_ascii_readable() -> None:
    text = logsetup.JsonFormatter().format(make_record("base « café » 数据", ()))
    assert "café" in text and "数据" in text


# --- text format ---------------------------------------------------------------

def test_text_line_appends_extras_as_key_value() -> None:
    fmt = logsetup.make_formatter(LogFormat.TEXT)
    line = fmt.format(make_record("pooler error: %s", ("no db",),
                                  extra={"sqlstate": "3D000", "user": "a b"}))
    assert f" {os.getpid()} INFO pooler error: no db" in line
    assert line.endswith(' sqlstate=3D000 user="a b"')


def test_text_line_without_extras_is_the_classic_format() -> None:
    line = logsetup.make_formatter(LogFormat.TEXT).format(make_record())
    assert line.endswith(f" {os.getpid()} INFO hello world")


# --- levels ----------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "verbose", "quiet", "level"), [
    (Settings(), 0, False, logging.INFO),
    (Settings(), 1, False, logging.DEBUG),
    (Settings(verbose=2), 0, False, logging.DEBUG),
    (Settings(), 1, True, logging.WARNING),
    (Settings(log_level=LogLevel.ERROR), 2, False, logging.ERROR),
    (Settings(log_level=LogLevel.DEBUG), 0, True, logging.DEBUG),
    (Settings(log_level=LogLevel.WARNING, verbose=1), 0, False, logging.WARNING),
])
def test_level_precedence(settings: Settings, verbose: int, quiet: bool, level: int) -> None:
    assert logsetup.resolve_level(settings, verbose, quiet) == level


def test_settings_parse_from_ini() -> None:
    cfg = config_from_string("[databases]\n[pgbouncer]\nlog_level = Warning\nlog_format = json\n"
                             "syslog = 1\nsyslog_ident = pooler\nsyslog_facility = LOCAL3\n",
                             path="t.ini")
    s = cfg.settings
    assert (s.log_level, s.log_format, s.syslog, s.syslog_ident, s.syslog_facility) == \
        (LogLevel.WARNING, LogFormat.JSON, True, "pooler", "local3")
    assert not cfg.warnings and "syslog" not in s.extra


@pytest.mark.parametrize("line", ["log_level = loud", "log_format = xml",
                                  "syslog_facility = kern"])
def test_bad_logging_values_are_refused(line: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_string(f"[databases]\n[pgbouncer]\n{line}\n", path="t.ini")
    assert line.split()[0] in info.value.message


# --- configure / apply / reopen ---------------------------------------------------

@pytest.fixture
def clean_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level = root.level
    yield root
    logsetup.remove_handlers()
    root.setLevel(level)


def flush_all() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def test_reopen_logfiles_after_a_rename(tmp_path: Path, clean_logging) -> None:
    path = tmp_path / "ecluse.log"
    logsetup.configure(Settings(logfile=str(path)), daemon=True)
    log = logging.getLogger("ecluse.test")
    log.warning("before rotation")
    rotated = tmp_path / "ecluse.log.1"
    path.rename(rotated)  # what logrotate does
    log.warning("after rename, before reopen")
    logsetup.reopen_logfiles()
    log.warning("after reopen")
    flush_all()
    old, new = rotated.read_text(), path.read_text()
    assert "before rotation" in old and "after rename, before reopen" in old
    assert "after reopen" in new and "before rotation" not in new


def test_reopen_without_logfile_does_nothing(clean_logging) -> None:
    logsetup.configure(Settings())
    logsetup.reopen_logfiles()  # must not raise
    assert not [h for h in clean_logging.handlers
                if isinstance(h, logsetup.ReopenableFileHandler)]


def test_daemon_with_logfile_does_not_log_to_stderr(tmp_path: Path, clean_logging) -> None:
    logsetup.configure(Settings(logfile=str(tmp_path / "x.log")), daemon=True)
    kinds = [type(h) for h in clean_logging.handlers if h in logsetup._state.handlers]
    assert kinds == [logsetup.ReopenableFileHandler]
    logsetup.configure(Settings(logfile=str(tmp_path / "x.log")), daemon=False)
    assert logging.StreamHandler in [type(h) for h in logsetup._state.handlers]


def test_configure_refuses_a_logfile_it_cannot_open(tmp_path: Path, clean_logging) -> None:
    with pytest.raises(OSError):
        logsetup.configure(Settings(logfile=str(tmp_path / "no" / "such" / "dir.log")))


def test_apply_changes_format_level_and_logfile(tmp_path: Path, clean_logging) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    settings = Settings(logfile=str(first))
    logsetup.configure(settings, daemon=True)
    log = logging.getLogger("ecluse.test")
    log.debug("hidden debug")
    log.info("text line")
    logsetup.apply(dataclasses.replace(settings, log_format=LogFormat.JSON,
                                       log_level=LogLevel.DEBUG))
    log.debug("json debug", extra={"client": "c1"})
    logsetup.apply(dataclasses.replace(settings, logfile=str(second),
                                       log_format=LogFormat.JSON))
    log.info("in the second file")
    flush_all()
    lines = first.read_text().splitlines()
    assert "hidden debug" not in first.read_text()
    assert lines[0].endswith("INFO text line")
    out = json.loads(lines[1])
    assert (out["msg"], out["level"], out["client"]) == ("json debug", "debug", "c1")
    assert json.loads(second.read_text())["msg"] == "in the second file"
    ours = [h for h in clean_logging.handlers if isinstance(h, logsetup.ReopenableFileHandler)]
    assert [h.baseFilename for h in ours] == [str(second)]


def test_apply_keeps_the_old_logfile_when_the_new_one_fails(tmp_path: Path,
                                                            clean_logging) -> None:
    good = tmp_path / "good.log"
    settings = Settings(logfile=str(good))
    logsetup.configure(settings, daemon=True)
    logsetup.apply(dataclasses.replace(settings, logfile=str(tmp_path / "missing" / "x.log")))
    logging.getLogger("ecluse.test").warning("still here")
    flush_all()
    text = good.read_text()
    assert "cannot open logfile" in text and "still here" in text


def test_apply_adds_and_removes_syslog(clean_logging) -> None:
    logsetup.configure(Settings())
    logsetup.apply(Settings(syslog=True))
    syslogs = [h for h in clean_logging.handlers
               if isinstance(h, logging.handlers.SysLogHandler)]
    assert len(syslogs) == 1
    logsetup.apply(Settings(syslog=False))
    assert not [h for h in clean_logging.handlers
                if isinstance(h, logging.handlers.SysLogHandler)]


# --- syslog ---------------------------------------------------------------------

@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def emit_through(handler: logging.Handler, msg: str, **extra: str) -> None:
    logger = logging.Logger("ecluse.syslogtest")  # not registered: no other handlers
    logger.addHandler(handler)
    try:
        logger.warning(msg, extra=extra)
    finally:
        handler.close()


def test_syslog_message_arrives_with_ident_and_facility(udp_listener) -> None:
    handler = logsetup.make_syslog_handler("myident", "local3", LogFormat.TEXT,
                                           address=udp_listener.getsockname())
    emit_through(handler, "pooler error: x", sqlstate="3D000")
    data = udp_listener.recv(65536)
    # PRI = facility local3 (19) * 8 + severity warning (4)
    assert data.startswith(f"<156>myident[{os.getpid()}]: WARNING pooler error: x".encode())
    assert b"sqlstate=3D000" in data


def test_syslog_json_payload_parses(udp_listener) -> None:
    handler = logsetup.make_syslog_handler("ecluse", "daemon", LogFormat.JSON,
                                           address=udp_listener.getsockname())
    emit_through(handler, "quote \" and\nnewline")
    data = udp_listener.recv(65536).rstrip(b"\0").decode()
    prefix = f"<28>ecluse[{os.getpid()}]: "  # daemon (3) * 8 + warning (4)
    assert data.startswith(prefix)
    out = json.loads(data[len(prefix):])
    assert out["msg"] == "quote \" and\nnewline" and out["level"] == "warning"
