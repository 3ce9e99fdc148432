"""Medians with the new targets and churn, the idle table and the markdown report."""

from __future__ import annotations

import report


def _run(target, protocol, clients, tps, rep=1, error=None, tls=False):
    return {"target": target, "protocol": protocol, "tls": tls, "clients": clients,
            "rep": rep, "tps": tps, "p50_ms": 1.0, "p99_ms": 2.0,
            "cpu_s_per_1k_tx": 0.05, "postgres_cpu_s_per_1k_tx": 0.1, "error": error}


def test_medians_of_churn_rows_and_failed_runs():
    runs = [_run("ecluse-w2", "churn", 10, t, rep=i) for i, t in enumerate((1, 3, 2))]
    runs.append(_run("ecluse-w2", "churn", 10, 99, rep=4, error="pgbench exit 2"))
    (row,) = report.medians(runs, [("ecluse-w2", "churn", False, 10)])
    assert (row["tps"], row["runs"], row["errors"], row["status"]) == (2, 4, 1, "ok")


def test_new_target_names_get_distinct_colours():
    colours = {report.target_color(t) for t in ("direct", "pgbouncer", "ecluse-w1",
                                                "ecluse-w2")}
    assert len(colours) == 4


def _idle_row(**kw):
    row = {"target": "ecluse-w1", "asked": 2000, "reached": 1000,
           "before": {"processes": 1, "rss_kb": 10_000, "pss_kb": 9_000},
           "after": {"processes": 1, "rss_kb": 14_000, "pss_kb": 12_000},
           "ramp_s": 1.25, "why": "pooler open-files limit 1,024"}
    row.update(kw)
    return row


def test_idle_table_gives_growth_per_client():
    text = report.idle_text_table([_idle_row()])
    assert "4.0" in text and "3.0" in text  # rss and pss KB per client
    assert "pooler open-files limit 1,024" in text


def test_idle_table_survives_a_pooler_that_was_not_running():
    text = report.idle_markdown_table([{"target": "pgbouncer", "asked": 10,
                                        "error": "pgbouncer is not running"}])
    assert "not running" in text and "n/a" in text


def test_markdown_report_has_goals_and_idle_sections():
    doc = {
        "date": "2026-11-25",
        "machine": {"nproc": 2, "cpu_model": "x", "postgres_version": "15",
                    "pgbouncer_version": "PgBouncer 1.18.0", "ecluse_version": "ecluse 0"},
        "settings": {"duration_s": 5, "repeat": 3, "scale": 10, "pool_size": 20},
        "skipped_targets": {},
        "median": report.medians([_run("pgbouncer", "simple", 10, 5)],
                                 [("pgbouncer", "simple", False, 10)]),
        "idle": [_idle_row()],
        "goals": [{"text": "ecluse-w1 holds 100,000 idle clients: held 1,000",
                   "status": "not met"}],
    }
    md = report.markdown_report(doc)
    assert "- **not met**: ecluse-w1 holds 100,000" in md
    assert "| ecluse-w1 | 2,000 | 1,000 |" in md


def test_update_readme_replaces_only_between_the_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "markdown_report", lambda doc: "TABLE\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n")
    assert report.update_readme(str(readme), {}, "bench/results/latest.png")
    text = readme.read_text()
    assert "old" not in text and "TABLE" in text and "(bench/results/latest.png)" in text
    assert text.startswith("intro\n") and text.endswith(f"{report.README_END}\noutro\n")
    assert report.update_readme(str(readme), {}, "x")  # idempotent: markers survive
    assert text.count("TABLE") == 1


def test_update_readme_without_markers_changes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert not report.update_readme(str(readme), {}, "x")
    assert readme.read_text() == "no markers\n"


def test_plot_draws_every_protocol_with_churn_on_its_own_scale(tmp_path):
    runs = [_run(t, p, c, tps) for t, base in (("pgbouncer", 10_000), ("ecluse-w2", 8_000))
            for p in ("simple", "churn") for c, tps in ((10, base), (100, base // 2))]
    order = [(t, p, False, c) for p in ("simple", "churn") for c in (10, 100)
             for t in ("pgbouncer", "ecluse-w2")]
    doc = {"date": "2026-11-25", "machine": {"nproc": 2},
           "settings": {"protocols": ["simple", "churn"], "targets": ["pgbouncer", "ecluse-w2"],
                        "clients": [10, 100], "duration_s": 1, "repeat": 1, "pool_size": 20},
           "median": report.medians(runs, order), "runs": runs}
    path = tmp_path / "plot.png"
    report.plot(str(path), doc)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
