"""``ptq2rtl rtl-run``: a whole program on the accelerator RTL against the golden engine and the schedule.

The program is compiled (``sim.compile``), one DRAM image per sample is run on the simulated accelerator
(``rtl_tests.accelerator``: the Verilog of ``hw.accelerator`` with a DRAM model at the configured bytes
per cycle), and each sample's outputs are compared element by element with ``sim.engine``; the cycles of
every instruction (between its retire and the previous one's) are compared with ``sim.isa.instr_cycles``,
their sum with what ``ptq2rtl simulate`` prints. ``layer`` runs one layer's ops alone (its inputs taken
from the engine's run of the whole program), for models the compiler does not take whole.
"""

from __future__ import annotations

import time

import numpy as np

from sim import engine
from sim.accel import AccelConfig
from sim.compile import Compiled, compile_program, sub_program
from sim.cycles import layer_of
from sim.program import IntegerProgram, ProgramError


def _samples(program: IntegerProgram, n: int, data: str | None) -> dict[str, np.ndarray]:
    """The first ``n`` evaluation samples as the program's integer inputs."""
    from ptq2rtl import models
    from quant.quantizers import program_inputs

    inputs, _ = next(iter(models.iter_batches(program.model, "eval", n, data=data)))
    return program_inputs(program, inputs)


def _layer(program: IntegerProgram, layer: str, inputs: dict) -> tuple[IntegerProgram, dict]:
    """The ops of ``layer`` as a program, and its inputs from the engine's run of the whole program: a layer
    (``blocks.3``: ``sim.cycles.layer_of``) or ops by name prefix (``blocks.3.0.dw``: that op and its
    ``blocks.3.0.dw.*`` epilogue)."""
    ops = [op.name for op in program.ops
           if layer_of(op.name) == layer or op.name == layer or op.name.startswith(layer + ".")]
    if not ops:
        known = sorted({layer_of(op.name) for op in program.ops})
        raise ProgramError(f"program {program.model!r} has no layer {layer!r} (layers: {', '.join(known)})")
    sub = sub_program(program, ops)
    need = [t.name for t in sub.inputs if t.name not in inputs]
    kept = engine.run(program, inputs, keep=need).outputs if need else {}
    return sub, {t.name: inputs[t.name] if t.name in inputs else kept[t.name] for t in sub.inputs}


def _tokens(program: IntegerProgram, inputs: dict[str, np.ndarray]) -> int | None:
    """The run-time token count of a text program's inputs (None for fixed shapes)."""
    return next((inputs[t.name].shape[1 + t.shape.index(None)] for t in program.inputs if None in t.shape), None)


def _first_difference(got: dict, want: dict) -> dict | None:
    """The first element of an output where ``got`` differs from ``want``, and how many differ there."""
    for name, w in want.items():
        g = got[name]
        bad = np.argwhere(g != w)
        if len(bad):
            idx = tuple(int(i) for i in bad[0])
            return {"output": name, "element": list(idx), "expected": int(w[idx]), "got": int(g[idx]),
                    "elements_differing": int(len(bad))}
    return None


def _cycle_difference(compiled: Compiled, retires: list[tuple[int, int]], per_instr: list[int]) -> dict | None:
    """The first instruction whose measured cycles differ from ``sim.isa.instr_cycles``."""
    prev = 0
    for (pc, at), want in zip(retires, per_instr):
        if at - prev != want:
            ins = compiled.instrs[pc]
            return {"pc": pc, "op": ins.note or ins.op, "instruction": ins.op, "expected": want, "got": at - prev}
        prev = at
    if len(retires) != len(per_instr):
        return {"pc": len(retires), "op": "(stream)", "instruction": "retired",
                "expected": len(per_instr), "got": len(retires)}
    return None


def first_bad_op(program: IntegerProgram, accel: AccelConfig, sample: dict[str, np.ndarray], *,
                 sim: str = "verilator") -> dict | None:
    """The first op of ``program`` whose output the RTL gets wrong on one sample (arrays with a batch of 1).

    Bisects over program prefixes: each prefix is compiled as a program of its own whose outputs are every
    tensor it makes that a later op reads, run on the RTL and compared with the engine's tensors. The
    shortest prefix that differs ends with the culprit.
    """
    from rtl_tests.accelerator import run_images

    want = {}

    def differs(k: int) -> dict | None:
        sub = sub_program(program, [op.name for op in program.ops[:k]])
        missing = [t for t in sub.outputs if t not in want]
        if missing:
            want.update(engine.run(program, sample, keep=missing).outputs)
        compiled = compile_program(sub, accel, seq_len=_tokens(sub, sample))
        (result,), _ = run_images(accel, [compiled.image({t.name: sample[t.name][0] for t in sub.inputs})], sim=sim)
        return _first_difference(compiled.outputs(result.image), {t: want[t][0] for t in sub.outputs})

    lo, hi = 0, len(program.ops)  # prefix lo agrees, prefix hi differs
    found = differs(hi)
    if found is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        d = differs(mid)
        if d is None:
            lo = mid
        else:
            hi, found = mid, d
    op = program.ops[hi - 1]
    return {"op": op.name, "kind": op.kind, **found}


def rtl_run(program: IntegerProgram, accel: AccelConfig, *, sim: str = "verilator", samples: int = 16,
            data: str | None = None, layer: str | None = None, localize: bool = True) -> dict:
    """Run ``samples`` evaluation samples of ``program`` (or of its ``layer``) on the accelerator RTL."""
    from ptq2rtl.simulate import simulate_report
    from rtl_tests.accelerator import run_images

    inputs = _samples(program, samples, data)
    if layer is not None:
        program, inputs = _layer(program, layer, inputs)
    tokens = _tokens(program, inputs)
    t0 = time.perf_counter()
    compiled = compile_program(program, accel, seq_len=tokens)
    compile_s = time.perf_counter() - t0
    n = len(next(iter(inputs.values())))
    want = engine.run(program, inputs).outputs
    images = [compiled.image({k: v[s] for k, v in inputs.items()}) for s in range(n)]
    results, stats = run_images(accel, images, sim=sim)
    schedule = compiled.cycles(accel)
    simulated = simulate_report(program, accel, seq_len=tokens or 128)["cycles"]
    rows = []
    for s, r in enumerate(results):
        got = compiled.outputs(r.image)
        rows.append({"sample": s, "cycles": r.cycles,
                     "mismatch": _first_difference(got, {k: v[s] for k, v in want.items()}),
                     "cycle_mismatch": _cycle_difference(compiled, r.retires, schedule.per_instr)})
    bad = next((r for r in rows if r["mismatch"]), None)
    if bad is not None and localize:
        bad["first_bad_op"] = first_bad_op(program, accel, {k: v[bad["sample"]:bad["sample"] + 1]
                                                            for k, v in inputs.items()}, sim=sim)
    bit_exact = sum(r["mismatch"] is None for r in rows)
    cycle_exact = sum(r["cycle_mismatch"] is None and r["cycles"] == schedule.total for r in rows)
    return {
        "model": program.model, "method": program.meta.get("method"), "wbits": program.meta.get("wbits"),
        "abits": program.meta.get("abits"), "accel": accel.name, "layer": layer, "sim": sim, "samples": n,
        "tokens": tokens, "instructions": len(compiled.instrs), "image_beats": compiled.n_beats,
        "bit_exact_samples": bit_exact, "cycle_exact_samples": cycle_exact,
        "rtl_cycles": [r["cycles"] for r in rows], "schedule_cycles": schedule.total, "simulate_cycles": simulated,
        "compile_s": round(compile_s, 3), "build_s": stats["build_s"], "sim_s": stats["run_s"],
        "ok": bit_exact == n and cycle_exact == n and simulated == schedule.total,
        "samples_detail": rows,
    }


def format_summary(r: dict) -> str:
    what = f"{r['model']} {r['method'] or ''} W{r['wbits']}A{r['abits']}".strip()
    if r["layer"]:
        what += f", layer {r['layer']}"
    cyc = sorted(set(r["rtl_cycles"]))
    lines = [
        f"{what} on {r['accel']} RTL ({r['sim']}): {r['instructions']} instructions, {r['image_beats']:,} DRAM beats"
        + (f", {r['tokens']} tokens" if r["tokens"] else ""),
        f"outputs bit-identical to the engine: {r['bit_exact_samples']}/{r['samples']} samples",
        f"cycles: RTL {', '.join(f'{c:,}' for c in cyc)}; schedule {r['schedule_cycles']:,}; "
        f"simulate {r['simulate_cycles']:,}; every instruction as sim.isa.instr_cycles: "
        f"{r['cycle_exact_samples']}/{r['samples']} samples",
        f"time: compile {r['compile_s']:.2f} s, simulator build {r['build_s']:.1f} s, simulation {r['sim_s']:.1f} s",
    ]
    for row in r["samples_detail"]:
        if row["mismatch"]:
            m = row["mismatch"]
            lines.append(f"  sample {row['sample']}: output {m['output']!r} element {m['element']}: expected "
                         f"{m['expected']}, got {m['got']} ({m['elements_differing']} elements differ)")
        if row.get("first_bad_op"):
            m = row["first_bad_op"]
            lines.append(f"  sample {row['sample']}: first op whose output differs: {m['op']!r} ({m['kind']}), "
                         f"{m['output']!r} element {m['element']}: expected {m['expected']}, got {m['got']}")
        if row["cycle_mismatch"]:
            m = row["cycle_mismatch"]
            lines.append(f"  sample {row['sample']}: instruction {m['pc']} ({m['instruction']} of op {m['op']!r}): "
                         f"expected {m['expected']} cycles, got {m['got']}")
    lines.append("OK" if r["ok"] else "MISMATCH")
    return "\n".join(lines)


#: what ``ptq2rtl regress --programs`` runs: (method, bits, accelerator); ``--full`` runs every method
REGRESS_PROGRAMS = (("baseline", 4, "edge-int4"), ("baseline", 8, "edge-int8"))


def regress_programs(*, full: bool = False, sim: str = "verilator", samples: int = 2, progress=None) -> list[dict]:
    """Whole vit-digits programs on the accelerator RTL (quantized here: calibration takes seconds a method)."""
    from ptq2rtl import flows
    from quant.methods import method_names
    from sim.accel import load_accel

    runs = [(m, b, a) for m in method_names() for _, b, a in REGRESS_PROGRAMS] if full else list(REGRESS_PROGRAMS)
    spec = flows.load_spec("vit-digits")
    out = []
    for method, bits, accel in runs:
        if progress:
            progress(f"program vit-digits {method} W{bits}A{bits} on {accel}")
        program, _ = flows.quantize("vit-digits", method, bits, bits, progress=False, spec=spec)
        out.append(rtl_run(program, load_accel(accel), sim=sim, samples=samples))
    return out
