"""Large messages stream through ecluse: a 100 MB bytea each way, memory bounded.

ecluse must never hold a whole large message (Bind with a huge parameter, a
huge DataRow) in memory: it forwards pieces as they arrive. Measured by the
ecluse process's peak resident set (VmHWM), not by time.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from integration.test_copy import MB, peak_rss


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_100mb_bytea_both_ways_with_bounded_memory(ecluse_factory, mode):
    ec = ecluse_factory({"pool_mode": mode, "default_pool_size": 1})
    blob = (bytes(range(256)) * 4096) * 100  # 100 MB
    digest = hashlib.md5(blob).hexdigest()
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        before = peak_rss(ec)
        # In: one Bind message of 100 MB (binary parameter).
        cur = conn.cursor()
        cur.execute("select length(%b), md5(%b)", (blob, blob))
        assert cur.fetchone() == (len(blob), digest)
        # Out: one DataRow of 100 MB.
        cur.execute("select decode(repeat('ab', %s), 'hex')", (100 * MB,), binary=True)
        got = cur.fetchone()[0]
        assert len(got) == 100 * MB and got[:2] == b"\xab\xab"
        del got
        grown = peak_rss(ec) - before
        # The server is fine afterwards.
        assert conn.execute("select 1").fetchone() == (1,)
    print(f"GROWN {grown / MB:.1f} MB")
    assert grown < 40 * MB, f"ecluse peak RSS grew by {grown / MB:.0f} MB"
