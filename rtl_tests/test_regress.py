"""rtl_tests.regress.run: the summary the `ptq2rtl regress` command prints."""

from __future__ import annotations

from rtl_tests import regress


def test_regress_summary_counts_vectors_mismatches_and_cycles():
    s = regress.run("icarus", ["gelu"])
    u = s["units"]["gelu"]
    assert s["ok"] and s["mismatches"] == 0 and s["cycle_mismatches"] == 0
    assert u["vectors"] == s["vectors"] >= 10_000
    assert {"random", "corner"} <= set(u["sources"])
    assert all(c["measured"] == c["model"] for r in u["runs"] for c in r["cycles"])
    text = regress.format_summary(s)
    assert text.startswith("RTL regression on icarus") and "gelu" in text
