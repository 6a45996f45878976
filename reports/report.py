"""``ptq2rtl report``: the main job. Every method x width on the bundled models -> tables and plots.

For each model and each registered method at W8A8 / W6A6 / W4A4 it computes
accuracy (or fidelity) under the paper and the integer protocol, and cycles,
latency and energy on edge-int4, edge-int8 and ecp5-85f; it adds the synthesis
and place-and-route figures of the FPGA config's whole accelerator and of every
unit, and the RTL regression summary. It writes ``REPORT.md``,
``results.json`` and PNG plots into the output folder.

A re-run reuses every cached entry whose inputs did not change: the key of an
entry hashes the model's data and weights, the method, the widths and the
source of quant/ and sim/, so editing any of them recomputes what it affects.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from ptq2rtl import models
from sim.ops import OPS

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("vit-digits", "minilm")
ACCELS = ("edge-int4", "edge-int8", "ecp5-85f")
BITS = (8, 6, 4)


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def code_fingerprint() -> str:
    """The source every result depends on: quantization, the golden model, the cost model, models and flows."""
    files = [p for d in ("quant", "sim", "configs") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml")]
    files += [ROOT / "ptq2rtl" / f for f in ("flows.py", "corpus.py", "vit_digits.py", "simulate.py")]
    files += sorted((ROOT / "ptq2rtl" / "models").glob("*.py"))
    return _hash_files(files)


def data_fingerprint(name: str) -> str:
    data = ROOT / "ptq2rtl" / "data"
    files = {"vit-digits": [data / "vit_digits.safetensors", data / "vit_digits.json"],
             "minilm": [data / "stdlib_sentences.txt", Path(models.minilm_folder()) / "model.safetensors"]}[name]
    return _hash_files(files)


def entry_key(name: str, method: str, bits: int, code: str, data: str) -> str:
    return hashlib.sha256(f"{name}|{method}|{bits}|{code}|{data}".encode()).hexdigest()[:16]


def op_classes(sim: dict) -> dict:
    """Cycles and energy of a simulation grouped by op class (linear, attention, softmax, ...)."""
    cycles: dict[str, int] = {}
    energy: dict[str, float] = {}
    for op in sim["ops"]:
        # the compiled schedule's instructions of no op (inputs loaded, outputs stored, end) are DRAM traffic
        c = OPS[op["kind"]].report_class if op["kind"] in OPS else "other"
        cycles[c] = cycles.get(c, 0) + op["cycles"]
        energy[c] = energy.get(c, 0.0) + op["energy_j"]
    return {"cycles": cycles, "energy_j": energy}


def simulate_entry(program, accel: str) -> dict:
    from ptq2rtl.simulate import simulate_report
    from sim.accel import AccelError

    try:
        sim = simulate_report(program, accel)
    except AccelError as exc:
        return {"refused": str(exc)}
    keep = ("cycles", "latency_s", "energy_j", "utilization", "dram_bytes", "energy_breakdown_j", "largest_energy",
            "macs", "clock_mhz", "gops", "peak_gops", "gops_per_w", "energy_preset")
    return {**{k: sim[k] for k in keep}, "basis": sim["basis"]["kind"], "op_classes": op_classes(sim),
            "layers": [{"name": l["name"], "latency_s": l["latency_s"]} for l in sim["layers"]]}


def evaluate_entry(name: str, method: str, bits: int, cache: Path, key: str, progress: bool,
                   limit: int | None) -> dict:
    """One model x method x width: calibrate, evaluate both protocols, simulate on both accelerators."""
    from ptq2rtl import flows
    from quant.lower import lower

    plan = flows.make_plan(name, method, bits, bits, progress=progress)
    program = lower(plan)
    program.save(cache / f"{name}-{method}-w{bits}a{bits}-{key}.safetensors")
    paper = flows.evaluate_paper(plan, limit=limit, progress=progress)
    integer = flows.evaluate_program(program, limit=limit, progress=progress)
    metrics = ("top1", "top5", "cosine", "nn_agreement", "n")
    return {"model": name, "method": method, "wbits": bits, "abits": bits, "key": key,
            "calib_seconds": plan.meta["calib_seconds"],
            "paper": {k: paper[k] for k in metrics if k in paper},
            "integer": {k: integer[k] for k in metrics if k in integer},
            "accel": {a: simulate_entry(program, a) for a in ACCELS}}


def run(out_dir: str | Path = ROOT / "reports", *, quick: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, limit: int | None = None, hardware: bool = True) -> dict:
    """Compute (or reuse) every entry, then write REPORT.md, results.json and the plots into ``out_dir``."""
    from quant.methods import method_names
    from reports import plots, tables

    out = Path(out_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    methods = ["baseline"] if quick else method_names()
    bits = (4,) if quick else BITS
    code = code_fingerprint()
    start = time.perf_counter()
    entries = []
    for name in MODELS:
        data = data_fingerprint(name)
        for method in methods:
            for b in bits:
                key = entry_key(name, method, b, code, f"{data}|{limit}")
                path = cache / f"{key}.json"
                if path.exists():
                    entry = json.loads(path.read_text())
                    log(f"report: {name} {method} W{b}A{b}: cached")
                else:
                    t0 = time.perf_counter()
                    entry = evaluate_entry(name, method, b, cache, key, progress, limit)
                    _atomic_write(path, json.dumps(entry, indent=1))
                    log(f"report: {name} {method} W{b}A{b}: {time.perf_counter() - t0:.0f} s")
                entries.append(entry)
    fp32 = {name: _fp32(name, cache, data_fingerprint(name), code, limit) for name in MODELS}
    hw = hardware_summary(cache, quick, log) if hardware else {}
    results = {"generated_seconds": round(time.perf_counter() - start, 1), "quick": quick, "fp32": fp32,
               "entries": entries, **hw}
    figures = plots.write_all(results, out)
    _atomic_write(out / "results.json", json.dumps(results, indent=1))
    _atomic_write(out / "REPORT.md", tables.report_markdown(results, figures))
    log(f"report: wrote {out / 'REPORT.md'}, {out / 'results.json'} and {len(figures)} plots "
        f"in {time.perf_counter() - start:.0f} s")
    return results


def _fp32(name: str, cache: Path, data: str, code: str, limit: int | None) -> dict:
    path = cache / f"fp32-{entry_key(name, 'fp32', 32, code, f'{data}|{limit}')}.json"
    if path.exists():
        return json.loads(path.read_text())
    if models.model_info(name).task == "image":
        r = models.fp32_eval(name, progress=False, limit=limit)
        result = {"top1": r["top1"], "top5": r["top5"], "n": r["n"]}
    else:  # the FP32 reference of the text metrics is FP32 itself: report the corpus size
        result = {"cosine": 1.0, "nn_agreement": 1.0, "n": limit or 2000}
    _atomic_write(path, json.dumps(result))
    return result


def hardware_summary(cache: Path, quick: bool, log) -> dict:
    """Synthesis figures and the RTL regression summary (each cached on the hw/ and rtl_tests/ sources)."""
    files = [p for d in ("hw", "rtl_tests", "sim", "configs") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".yaml")] + [Path(__file__)]
    key = _hash_files(files)[:16]
    out = {}
    for what, fn in (("synthesis", _synthesis), ("regression", _regression)):
        path = cache / f"{what}-{'quick-' if quick else ''}{key}.json"
        if path.exists():
            out[what] = json.loads(path.read_text())
            log(f"report: {what}: cached")
            continue
        t0 = time.perf_counter()
        out[what] = fn(quick)
        _atomic_write(path, json.dumps(out[what], indent=1))
        log(f"report: {what}: {time.perf_counter() - t0:.0f} s")
    return out


#: where the report places and routes: every design at one router target, the clock the FPGA config aims
#: for, so that the figures compare (``ptq2rtl synth --accel CONFIG --freq 100`` shares the cached results)
SYNTH_TARGET, SYNTH_PART, SYNTH_FREQ_MHZ = "ecp5", "85f", 100
#: the FPGA config, placed whole and unit by unit; the edge configs' units (ASIC design points: their buffers
#: are sized for SRAM, so only their units are placed) on the same part, for the int4-vs-int8 comparison
FPGA_CONFIG, EDGE_CONFIGS = "ecp5-85f", ("edge-int4", "edge-int8")
#: a place and route stops here and its row says so (the exported 16x16 log2 array had not finished after 18 min)
PNR_TIMEOUT_S = {"unit": 900, "accelerator": 2400}


def _rows(result: dict, config: str) -> list[dict]:
    return [{"unit": unit, "config": config, "luts": r["lut"], "ffs": r["ff"], "dsps": r["dsp"], "brams": r["bram"],
             "carries": r.get("carry"), "placed": r.get("placed"), "fmax_mhz": r.get("fmax_mhz"),
             "fmax_note": r.get("fmax_note"), "params": r.get("params")} for unit, r in result["units"].items()]


def _synthesis(quick: bool) -> dict:
    """The FPGA config's accelerator and units, the edge configs' units and a power-of-two requantizer, on the
    LFE5U-85F (yosys with ABC, nextpnr's Fmax) through ``hw.synth``'s cache, which ``ptq2rtl synth`` shares;
    the measured Fmax is recorded for ``simulate``'s clock check. Quick (what the tests run): edge-int4's GELU
    unit, without place and route."""
    from hw import synth
    from ptq2rtl import clocks
    from sim.accel import load_accel, requant_params

    def run(what, units=None, whole=None, fmax=True):
        budget = PNR_TIMEOUT_S["accelerator" if whole or (units and "accelerator" in units) else "unit"]
        return synth.synth(what, SYNTH_TARGET, part=SYNTH_PART, freq_mhz=SYNTH_FREQ_MHZ, units=units,
                           whole=whole, fmax=fmax, pnr_timeout_s=budget)

    if quick:
        result = run(load_accel(EDGE_CONFIGS[0]), units=["gelu"], fmax=False)
        rows, clock = _rows(result, EDGE_CONFIGS[0]), None
    else:
        fpga = load_accel(FPGA_CONFIG)
        rows = []
        # the accelerator alone first: its place and route is the longest, and a timeout there leaves the units
        for units in (["accelerator"], None):
            result = run(fpga, units=units, whole=False)
            clocks.record(fpga, result)
            rows += _rows(result, FPGA_CONFIG)
        clock = clocks.clock_status(fpga)
        for name in EDGE_CONFIGS:
            rows += _rows(run(load_accel(name), whole=False), name)
        pow2 = {"requant": {**requant_params(load_accel(EDGE_CONFIGS[0])), "pow2": True}}
        rows += _rows(run(pow2), f"{EDGE_CONFIGS[0]}, power-of-two M")
    part = synth.part_of(SYNTH_TARGET, SYNTH_PART)
    return {"target": part.name, "package": part.package, "speed": part.speed, "freq_mhz": SYNTH_FREQ_MHZ,
            "lut_mapping": result["lut_mapping"], "tools": result["tools"], "clock": clock,
            "available": {"luts": part.lut, "dsps": part.dsp, "brams": part.bram}, "rows": rows}


def _regression(quick: bool) -> dict:
    from rtl_tests import regress

    return regress.run(sim="icarus", with_traces=not quick)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
