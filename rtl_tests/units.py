"""The RTL units the benches know, by bench name: component class and vector generator."""

from __future__ import annotations

from hw.gelu import Gelu
from hw.layernorm import LayerNorm
from hw.mac_array import MacArray
from hw.requant import Requantizer
from hw.softmax import SoftmaxLog2
from rtl_tests import vectors

UNITS = {
    "requant": (Requantizer, vectors.requant_vectors),
    "gelu": (Gelu, vectors.gelu_vectors),
    "mac_array": (MacArray, vectors.mac_array_vectors),
    "softmax": (SoftmaxLog2, vectors.softmax_vectors),
    "layernorm": (LayerNorm, vectors.layernorm_vectors),
}

#: the configurations every regression runs on random and corner vectors: small, fast, parameterized
CONFIGS = {
    "requant": {
        "dyadic-16b": dict(in_bits=32, out_bits=16, mult_bits=16, lanes=4, channels=16),
        "pow2-8b": dict(in_bits=32, out_bits=8, lanes=2, channels=16, pow2=True, latency=4),
    },
    "gelu": {"int8-x4": dict(in_bits=8, out_bits=8, lanes=4, latency=2),
             "int8-o16-x4": dict(in_bits=8, out_bits=16, lanes=4, latency=2)},  # the edge configs: 16-bit entries
    "mac_array": {
        "int4-4x4": dict(rows=4, cols=4, act_bits=4, weight_bits=4, max_m=32),
        "int8-8x4": dict(rows=8, cols=4, act_bits=8, weight_bits=8, max_m=32),
    },
    "softmax": {
        "x2-len64": dict(in_bits=16, max_len=64, lanes=2),
        "x1-len32-lat11": dict(in_bits=16, max_len=32, lanes=1, latency=11),
    },
    "layernorm": {
        "x4-n64-k2-lat64": dict(in_bits=16, out_bits=8, max_n=64, lanes=4, steps_per_cycle=2, latency=64),
        "x1-n32-k1": dict(in_bits=16, out_bits=16, max_n=32, lanes=1),
    },
}


def run_config(unit: str, config: str, sim: str) -> dict:
    """One bench: ``unit`` built with ``CONFIGS[unit][config]`` on random and corner vectors."""
    from rtl_tests import harness

    cls, make_vectors = UNITS[unit]
    dut = cls(**CONFIGS[unit][config])
    p = dut.params
    return harness.run_bench(unit, dut, p, make_vectors(p), sim, tag=config)


def run_trace(unit: str, path, sim: str) -> dict:
    """One bench replaying a trace file (``rtl_tests.traces``) on a unit sized for it."""
    from rtl_tests import harness, traces

    v = traces.load(path)
    cls, _ = UNITS[unit]
    dut = cls(**traces.unit_for(unit, v))
    p = dut.params
    return harness.run_bench(unit, dut, p, v, sim, tag=f"trace-{path.parent.name}")
