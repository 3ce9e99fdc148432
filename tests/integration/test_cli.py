"""The command line and config errors, as an operator meets them."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import psycopg


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecluse", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


def test_version_and_help():
    out = run_cli("-V")
    assert out.returncode == 0 and out.stdout.startswith("ecluse ")
    out = run_cli("--help")
    for flag in ("--daemon", "--reboot", "--quiet", "--verbose", "--user", "--version"):
        assert flag in out.stdout


def test_reboot_is_refused_clearly():
    out = run_cli("-R", "whatever.ini")
    assert out.returncode != 0
    assert "not supported" in out.stderr and "kill -USR2" in out.stderr


def test_bad_value_names_file_line_and_expectation(tmp_path):
    cfg = tmp_path / "bad.ini"
    cfg.write_text("[databases]\n[pgbouncer]\nlisten_port = 6432\ndefault_pool_size = lots\n")
    out = run_cli(str(cfg))
    assert out.returncode != 0
    assert f"{cfg}:4" in out.stderr
    assert "default_pool_size" in out.stderr


def test_unknown_setting_is_a_warning_with_file_and_line(ecluse_factory):
    ec = ecluse_factory({"no_such_setting": "1"})
    with psycopg.connect(ec.dsn(), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
    log = ec.log()
    assert "no_such_setting" in log
    assert "ecluse.ini:" in log


def test_sigterm_lets_transaction_finish(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "shutdown_timeout": 10})
    conn = psycopg.connect(ec.dsn(), autocommit=True)
    result = {}

    def run():
        result["r"] = conn.execute("select pg_sleep(1.5), 'completed'").fetchone()[1]

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    ec.signal(signal.SIGTERM)
    t.join(10)
    assert result.get("r") == "completed"
    assert ec.proc.wait(10) == 0
    conn.close()


def test_pidfile_written_and_removed(ecluse_factory, tmp_path):
    pidfile = tmp_path / "ecluse.pid"
    ec = ecluse_factory({"pidfile": str(pidfile)})
    deadline = time.monotonic() + 5  # the socket listens a moment before the pidfile exists
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(pidfile.read_text()) == ec.proc.pid
    ec.stop()
    assert not pidfile.exists()
