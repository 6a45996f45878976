"""``ptq2rtl report``: the main job. Methods x widths on the bundled models, the FPGA config's synthesis and the
RTL regression -> REPORT.md, results.json and PNG plots.

A run covers one :class:`Selection`:

- ``default``, the representative run: every registered method at W6A6 and W4A4 on vit-digits (its whole test
  split) and minilm (its first :data:`MINILM_SENTENCES` sentences); the FPGA config's synthesis figures as
  ``hw.synth``'s cache or the shipped records hold them (no tool runs); a regression slice, each unit's first
  bench configuration on Icarus.
- ``full``: every method at W8A8, W6A6, W4A4 and W3A3, minilm on its whole corpus; the FPGA config placed and
  routed whole and unit by unit, the edge configs' units and a power-of-two requantizer; the Icarus regression
  with every bench configuration and every program trace.
- ``quick`` (what the tests run): baseline W4A4; the edge-int4 GELU unit synthesized without place and route and
  its first bench configuration.

Every entry (a model x method x width: calibrated, evaluated under both protocols, priced on each bundled
accelerator) is a design point of ``ptq2rtl.explore``, computed by its engine -- in this process, or on Ray with
``workers`` / ``address`` -- into content-hashed, atomically written records under ``OUT/cache/``: a re-run
recomputes only what changed (the key hashes the model's weights and data, the method, the widths, the samples,
the accelerator and the source of quant/, sim/ and the flows). The synthesis and regression summaries run on a
thread beside the entries and are cached on the hw/, rtl_tests/, sim/ and configs/ source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ptq2rtl import explore, models

ROOT = Path(__file__).resolve().parents[1]
#: minilm first: its programs are the long ones (a minute or more where a method reconstructs), so they start
#: first and vit-digits' short ones fill the workers' tail (the tables order the models by name)
MODELS = ("minilm", "vit-digits")
ACCELS = ("edge-int4", "edge-int8", "ecp5-85f")
#: minilm's evaluation sentences in the default run (its corpus holds 2,000; the full run takes them all)
MINILM_SENTENCES = 200
SELECTIONS = ("default", "full", "quick")


@dataclass(frozen=True)
class Selection:
    """What one run of the report covers."""

    name: str  #: "default", "full" or "quick"
    methods: tuple[str, ...]
    bits: tuple[int, ...]  #: WnAn widths, n each
    limits: dict[str, int | None] = field(hash=False)  #: model -> evaluation samples (None: all)
    synthesis: str  #: "cached" (look up, no tool runs), "measured" (the tools run), "quick"
    regression: dict = field(hash=False)  #: ``rtl_tests.regress.run``'s arguments


def select(name: str = "default", limit: int | None = None) -> Selection:
    """The selection ``name``; ``limit`` caps every model's evaluation samples."""
    from quant.methods import method_names

    if name not in SELECTIONS:
        raise ValueError(f"unknown report selection {name!r} (accepted: {', '.join(SELECTIONS)})")
    cap = {"default": {"minilm": MINILM_SENTENCES}}.get(name, {})
    limits = {m: min((x for x in (cap.get(m), limit) if x is not None), default=None) for m in MODELS}
    if name == "quick":
        return Selection(name, ("baseline",), (4,), limits, "quick",
                         {"sim": "icarus", "unit_names": ["gelu"], "with_traces": False, "configs": 1})
    if name == "default":
        return Selection(name, tuple(method_names()), (6, 4), limits, "cached",
                         {"sim": "icarus", "with_traces": False, "configs": 1})
    return Selection(name, tuple(method_names()), (8, 6, 4, 3), limits, "measured",
                     {"sim": "icarus", "with_traces": True})


def design_points(sel: Selection) -> explore.Spec:
    """The report's entries as an explore design space: every (model, method, width) program, evaluated under
    both protocols, on every bundled accelerator."""
    import yaml

    from sim.accel import load_accel

    programs = tuple(explore.ProgramPoint(model, method, b, b, sel.limits[model], paper=True)
                     for model in MODELS for method in sel.methods for b in sel.bits)
    accels = []
    for name in ACCELS:
        accel = load_accel(name)
        accels.append(explore.AccelPoint(name, (), accel, yaml.safe_load(Path(accel.source).read_text())))
    return explore.Spec(f"ptq2rtl report ({sel.name})", "report", programs, tuple(accels))


def data_fingerprint(name: str) -> str:
    data = ROOT / "ptq2rtl" / "data"
    files = {"vit-digits": [data / "vit_digits.safetensors", data / "vit_digits.json"],
             "minilm": [data / "stdlib_sentences.txt", Path(models.minilm_folder()) / "model.safetensors"]}[name]
    return _hash_files(files)


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def entry(done: explore.Records, spec: explore.Spec, pp: explore.ProgramPoint) -> dict:
    """One model x method x width as the tables and plots read it, from its explore records (``refused``: why
    the lowering gave no integer program, and no metrics)."""
    prog = done.program(pp)
    metrics = ("top1", "top5", "cosine", "nn_agreement", "n")
    return {"model": pp.model, "method": pp.method, "wbits": pp.wbits, "abits": pp.abits,
            "key": done.program_key(pp), "calib_seconds": prog["calib_seconds"], "seconds": prog["seconds"],
            **({"refused": prog["refused"]} if "refused" in prog else {}),
            "paper": prog.get("paper_protocol", {}), "integer": {k: prog[k] for k in metrics if k in prog},
            "accel": {a.base: done.point(pp, a, spec.seq_len) for a in spec.accels}}


def run(out_dir: str | Path = ROOT / "reports", *, selection: str = "default", limit: int | None = None,
        hardware: bool = True, workers: int = 0, address: str | None = None, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
    """Compute (or reuse) the selection's entries and hardware summaries, then write REPORT.md, results.json and
    the plots into ``out_dir``. ``workers`` / ``address``: as ``ptq2rtl explore`` (0: in this process)."""
    from reports import plots, tables

    sel = select(selection, limit)
    out = Path(out_dir)
    cache = out / "cache"
    start = time.perf_counter()
    spec = design_points(sel)
    seconds = {}
    cache.mkdir(parents=True, exist_ok=True)
    # the hardware summaries (a Verilog build, simulator subprocesses) run on a thread beside the entries, so
    # they take the cores the entries leave idle (the last programs' tail) instead of a stretch of their own
    with ThreadPoolExecutor(1, thread_name_prefix="report-hardware") as pool:
        hw_job = pool.submit(hardware_summary, cache, sel, log, seconds) if hardware else None
        with _one_torch_thread() if workers == 0 and not address else contextlib.nullcontext():
            done = explore.compute(spec, out, workers=workers, address=address, progress=progress, log=log)
        entries = [entry(done, spec, pp) for pp in spec.programs]
        fp32 = {name: _fp32(name, cache, sel.limits[name]) for name in MODELS}
        seconds["entries"] = round(time.perf_counter() - start, 1)
        hw = hw_job.result() if hw_job else {}
    seconds["total"] = round(time.perf_counter() - start, 1)
    results = {"generated_seconds": seconds["total"], "seconds": seconds, "selection": asdict(sel),
               "computed": done.computed, "where": done.where, "fp32": fp32, "entries": entries, **hw}
    figures = plots.write_all(results, out)
    _atomic_write(out / "results.json", json.dumps(results, indent=1))
    _atomic_write(out / "REPORT.md", tables.report_markdown(results, figures))
    log(f"report ({sel.name}): wrote {out / 'REPORT.md'}, {out / 'results.json'} and {len(figures)} plots "
        f"in {time.perf_counter() - start:.0f} s")
    return results


@contextlib.contextmanager
def _one_torch_thread():
    """Entries computed in this process run on one torch thread, as each Ray worker does: a thread pool's
    barriers stall whenever another process holds a core (apq's vit-digits calibration took 157 s on two
    threads and 6.9 s on one beside a place and route on two cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fp32(name: str, cache: Path, limit: int | None) -> dict:
    key = hashlib.sha256(f"{name}|{explore.code_fingerprint()}|{data_fingerprint(name)}|{limit}".encode())
    path = cache / f"fp32-{key.hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    if models.model_info(name).task == "image":
        r = models.fp32_eval(name, progress=False, limit=limit)
        result = {"top1": r["top1"], "top5": r["top5"], "n": r["n"]}
    else:  # the FP32 reference of the text metrics is FP32 itself: report the corpus size
        result = {"cosine": 1.0, "nn_agreement": 1.0, "n": limit or 2000}
    _atomic_write(path, json.dumps(result))
    return result


def hardware_summary(cache: Path, sel: Selection, log, seconds: dict) -> dict:
    """Synthesis figures and the RTL regression summary of ``sel``, each cached on the hw/, rtl_tests/, sim/ and
    configs/ source; a lookup of synthesis figures also on the names of the records ``hw.synth``'s cache and the
    shipped folder hold (what it finds changes with them)."""
    from hw import synth

    files = [p for d in ("hw", "rtl_tests", "sim", "configs") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".yaml")] + [Path(__file__)]
    key = _hash_files(files)[:16]
    records = sorted(p.name for d in (synth.default_cache_dir(), synth.SHIPPED_RESULTS) for p in d.glob("*.json"))
    keys = {"synthesis": key + (hashlib.sha256("|".join(records).encode()).hexdigest()[:8]
                                if sel.synthesis == "cached" else ""), "regression": key}
    out = {}
    for what, fn in (("synthesis", _synthesis), ("regression", _regression)):
        t0 = time.perf_counter()
        path = cache / f"{what}-{sel.name}-{keys[what]}.json"
        if path.exists():
            out[what] = json.loads(path.read_text())
            log(f"report: {what}: cached")
        else:
            out[what] = fn(sel)
            _atomic_write(path, json.dumps(out[what], indent=1))
            log(f"report: {what}: {time.perf_counter() - t0:.0f} s")
        seconds[what] = round(time.perf_counter() - t0, 1)
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


def _synthesis(sel: Selection) -> dict:
    """The FPGA config's accelerator and units on the LFE5U-85F (yosys with ABC, nextpnr's Fmax) through
    ``hw.synth``'s cache, which ``ptq2rtl synth`` shares. ``cached``: the figures the cache or the shipped records
    hold for today's Verilog, no tool run, what is not there listed as ``missing``. ``measured``: the tools run
    where the cache has nothing, the measured Fmax is recorded for ``simulate``'s clock check, and the edge
    configs' units and a power-of-two requantizer are placed too. ``quick``: edge-int4's GELU unit, without
    place and route."""
    from hw import synth
    from ptq2rtl import clocks
    from sim.accel import UNIT_PARAMS, load_accel, requant_params

    def run(what, units=None, whole=None, fmax=True):
        budget = PNR_TIMEOUT_S["accelerator" if whole or (units and "accelerator" in units) else "unit"]
        return synth.synth(what, SYNTH_TARGET, part=SYNTH_PART, freq_mhz=SYNTH_FREQ_MHZ, units=units,
                           whole=whole, fmax=fmax, pnr_timeout_s=budget)

    missing, clock = [], None
    if sel.synthesis == "quick":
        result = run(load_accel(EDGE_CONFIGS[0]), units=["gelu"], fmax=False)
        rows = _rows(result, EDGE_CONFIGS[0])
    elif sel.synthesis == "cached":
        fpga = load_accel(FPGA_CONFIG)
        designs = ["accelerator", *UNIT_PARAMS]
        area = explore.AreaSpec(SYNTH_TARGET, SYNTH_PART, SYNTH_FREQ_MHZ)
        result = explore.cached_synthesis(fpga, area, designs)
        rows = _rows(result, FPGA_CONFIG)
        missing = [d for d in designs if d not in result["units"]]
        clock = clocks.clock_status(fpga)
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
    return {"source": sel.synthesis, "fpga_config": None if sel.synthesis == "quick" else FPGA_CONFIG,
            "target": part.name, "package": part.package, "speed": part.speed,
            "freq_mhz": SYNTH_FREQ_MHZ, "lut_mapping": result["lut_mapping"], "tools": result["tools"],
            "clock": clock, "available": {"luts": part.lut, "dsps": part.dsp, "brams": part.bram}, "rows": rows,
            "missing": {"config": FPGA_CONFIG, "designs": missing} if missing else None}


def _regression(sel: Selection) -> dict:
    from rtl_tests import regress

    return regress.run(**sel.regression)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
