"""RTL benches need no set-up from the user: the simulators are found (and Verilator's
environment is set) here, before any bench runs."""

from __future__ import annotations

from hw import toolchain

SIMS = list(toolchain.SIMULATORS)

for _sim in toolchain.SIMULATORS:
    toolchain.setup_simulator(_sim)
