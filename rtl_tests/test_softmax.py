"""Log2 softmax RTL vs sim.intops.softmax_log2, on Icarus and on Verilator: random and corner vectors, then program traces."""

from __future__ import annotations

import pytest

from rtl_tests import harness, traces, units
from rtl_tests.conftest import SIMS


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("config", sorted(units.CONFIGS["softmax"]))
def test_softmax_matches_intops_and_row_cycles(config, sim):
    s = units.run_config("softmax", config, sim)
    assert s["vectors"] >= 10_000
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("config", units.exported_cases("softmax"))
def test_softmax_at_exported_sizes_matches_intops_and_row_cycles_on_verilator(config):
    s = units.run_config("softmax", config, "verilator")
    assert s["vectors"] >= 10_000 and s["cycles"]
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("path", traces.files("softmax"), ids=lambda p: p.parent.name)
def test_softmax_replays_program_traces_and_row_cycles(path, sim):
    s = units.run_trace("softmax", path, sim)
    assert s["vectors"] > 0
    assert s["mismatches"] == 0 and s["cycles_ok"], harness.describe_failures(s)
