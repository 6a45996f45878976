"""Mutation fuzzing of real program files: every mutant is refused with a ProgramError or runs cleanly.

The CI slice runs a few thousand mutants; ``python -m tests.fuzz_programs --mutants 20000`` runs it long.
"""

from __future__ import annotations

import pytest

from tests.fuzz_programs import fuzz, programs

MUTANTS = {"vit-digits-baseline-w4a4": 1500, "bert-synthetic": 1500}


@pytest.fixture(scope="module")
def fuzzed():
    return {name: (program, inputs) for name, program, inputs in programs()}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_every_mutant_is_refused_with_a_program_error_or_runs(fuzzed, name):
    program, inputs = fuzzed[name]
    result = fuzz(program, inputs, MUTANTS[name], seed=2026)
    assert not result.crashed, f"{result.line()}\n" + "\n".join(result.crashed[:5])
    assert result.rejected > MUTANTS[name] // 2  # the mutator does produce bad programs
    assert result.accepted > 0  # and some harmless ones (metadata, values in range)
