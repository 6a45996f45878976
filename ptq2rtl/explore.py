"""``ptq2rtl explore``: a design space as data, evaluated on Ray, with its Pareto fronts.

A spec (YAML) names *programs* -- bundled models x methods x widths WnAn, optionally with per-site widths
(``quant.plan.Sites``) -- and *accelerators* -- a base description (``configs/*.yaml`` or a file) with
grids or ranges over its fields. Every program is calibrated, lowered and evaluated under the integer
protocol once (its accuracy does not depend on the hardware); every (program, accelerator) point is priced
by the cost model on the compiled schedule (``ptq2rtl.simulate``), or refused by
``sim.accel.check_program`` and recorded as such; where the spec asks for area, the synthesis figures that
``hw.synth``'s cache (or the shipped records) holds for the accelerator's Verilog are read -- no tool runs.

Every finished program, point and area lookup is one file under ``DIR/cache/``, named by a hash of what it
depends on (its parameters, the source of quant/, sim/ and the flows, the model's weights and data) and
written atomically, so a killed run restarts where it stopped, recomputes nothing it had finished and
writes the same table as an uninterrupted run. The work runs as Ray tasks (local Ray with ``workers``
CPUs, or an existing cluster at ``address``); the driver alone writes files.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ptq2rtl import models
from sim.accel import AccelConfig, AccelError, load_accel, parse_accel

ROOT = Path(__file__).resolve().parents[1]
#: the models whose weights and data a key can fingerprint (``reports.report.data_fingerprint``)
MODELS = ("vit-digits", "minilm")
SPEC_FIELDS = ("name", "programs", "accelerators", "seq_len", "area")
PROGRAM_FIELDS = ("model", "methods", "widths", "limit", "sites")
ACCEL_FIELDS = ("base", "grid")
AREA_FIELDS = ("target", "part", "freq_mhz", "design")
AREA_DESIGNS = ("units", "accelerator")
#: grid keys besides the base description's own dotted fields: the array's shape, every vector unit's lanes
SHORTHANDS = ("array", "lanes")
#: the figures of a priced point kept in its record (``ptq2rtl.simulate.simulate_report``'s names)
COST_FIELDS = ("cycles", "latency_s", "energy_j", "utilization", "dram_bytes", "stall_cycles", "macs",
               "energy_breakdown_j")
METRICS = ("top1", "top5", "cosine", "nn_agreement")
#: what a priced point's record keeps besides its table's columns: what ``ptq2rtl report``'s tables and plots read
DETAIL_FIELDS = ("largest_energy", "clock_mhz", "gops", "peak_gops", "gops_per_w", "energy_preset")


class ExploreError(ValueError):
    """A bad spec or an unusable Ray: names the file, the field and what is wrong."""


# ------------------------------------------------------------------ the design space
@dataclass(frozen=True)
class ProgramPoint:
    """One program: a bundled model quantized by ``method`` at WnAn (with per-site overrides), evaluated on the
    first ``limit`` samples (all when None), under the paper protocol too with ``paper``."""

    model: str
    method: str
    wbits: int
    abits: int
    limit: int | None = None
    sites: tuple[tuple[str, str, int], ...] = ()  #: ("weights" | "acts", site, bits), sorted
    paper: bool = False

    @property
    def label(self) -> str:
        over = "".join(f" {s}:{k[0]}{b}" for k, s, b in self.sites)
        return f"{self.model} {self.method} W{self.wbits}A{self.abits}{over}"

    def key(self, fingerprint: str) -> str:
        return _digest(asdict(self), fingerprint)


@dataclass(frozen=True)
class AccelPoint:
    """One accelerator: ``base`` with ``overrides`` (grid key -> value, in the spec's order), validated."""

    base: str
    overrides: tuple[tuple[str, Any], ...]
    accel: AccelConfig
    data: dict = field(compare=False, repr=False)  #: the description as YAML data (written next to the results)

    @property
    def label(self) -> str:
        return " ".join([self.base] + [f"{k}={v}" for k, v in self.overrides])

    @property
    def key(self) -> str:
        return _digest({k: v for k, v in asdict(self.accel).items() if k != "source"})


@dataclass(frozen=True)
class AreaSpec:
    """Where area comes from: ``hw.synth``'s figures for ``target`` / ``part`` at a ``freq_mhz`` place-and-route
    target, summed over the units or of the joined accelerator."""

    target: str = "ecp5"
    part: str = "85f"
    freq_mhz: float = 100.0
    design: str = "units"


@dataclass(frozen=True)
class Spec:
    source: str
    name: str
    programs: tuple[ProgramPoint, ...]
    accels: tuple[AccelPoint, ...]
    seq_len: int = 128
    area: AreaSpec | None = None

    @property
    def grid_keys(self) -> list[str]:
        return list(dict.fromkeys(k for a in self.accels for k, _ in a.overrides))


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Reader:
    """One mapping of the spec; every error names the file and the field."""

    def __init__(self, source: str, data: Any, where: str, accepted: tuple[str, ...]):
        self.source, self.where = source, where
        if not isinstance(data, dict):
            self.fail(where or "(top level)", f"must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in accepted:
                self.fail(self.at(key), f"unknown field (accepted: {', '.join(accepted)})")
        self.data = data

    def at(self, key) -> str:
        return f"{self.where}.{key}" if self.where else str(key)

    def fail(self, where: str, problem: str):
        raise ExploreError(f"{self.source}: field {where!r}: {problem}")

    def list(self, key: str, required: bool = True) -> list:
        if key not in self.data:
            if required:
                self.fail(self.at(key), "missing")
            return []
        v = self.data[key]
        if not isinstance(v, list):
            self.fail(self.at(key), f"must be a list, got {v!r}")
        if not v:
            self.fail(self.at(key), "empty list: nothing to explore")
        return v

    def positive(self, key: str, default: int | None) -> int | None:
        v = self.data.get(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            self.fail(self.at(key), f"must be a positive integer, got {v!r}")
        return v


def load_spec(path: str | Path, limit: int | None = None) -> Spec:
    """Read and validate a spec; ``limit`` caps every program's evaluation samples. Every accelerator point is
    built and checked here, so a bad spec stops before anything runs."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExploreError(f"{p}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExploreError(f"{p}: cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        raise ExploreError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    top = _Reader(str(p), data, "", SPEC_FIELDS)
    name = data.get("name", p.stem)
    if not isinstance(name, str) or not name:
        top.fail("name", f"must be a non-empty string, got {name!r}")
    programs = [pp for i, entry in enumerate(top.list("programs"))
                for pp in _programs(_Reader(str(p), entry, f"programs[{i}]", PROGRAM_FIELDS), limit)]
    one = isinstance(data.get("accelerators"), dict)  # one block, or a list of blocks
    blocks = [data["accelerators"]] if one else top.list("accelerators")
    accels: dict[str, AccelPoint] = {}
    for i, block in enumerate(blocks):
        where = "accelerators" if one else f"accelerators[{i}]"
        for a in _accelerators(_Reader(str(p), block, where, ACCEL_FIELDS), p.parent):
            accels.setdefault(a.key, a)  # two grid points that build the same description are one
    seq_len = top.positive("seq_len", 128)
    return Spec(str(p), name, tuple(dict.fromkeys(programs)), tuple(accels.values()), seq_len,
                _area(top, data.get("area", False)))


def _programs(r: _Reader, limit: int | None) -> list[ProgramPoint]:
    from quant.methods import get_method
    from quant.quantizers import QuantError, check_bits

    model = r.data.get("model")
    if model not in MODELS:
        r.fail(r.at("model"), f"unknown model {model!r} (explore takes the bundled models: {', '.join(MODELS)})")
    for m in r.list("methods"):
        try:
            get_method(m)
        except QuantError as exc:
            r.fail(r.at("methods"), str(exc))
    widths = []
    for w in r.list("widths"):
        found = re.fullmatch(r"W(\d+)A(\d+)", w) if isinstance(w, str) else None
        if not found:
            r.fail(r.at("widths"), f"{w!r} is not a width WnAn (e.g. W4A4)")
        try:
            widths.append((check_bits("wbits", int(found[1])), check_bits("abits", int(found[2]))))
        except QuantError as exc:
            r.fail(r.at("widths"), f"{w}: {exc}")
    limits = [x for x in (r.positive("limit", None), limit) if x is not None]
    limit = min(limits) if limits else None
    sites = _sites(r, model) if "sites" in r.data else ()
    return [ProgramPoint(model, m, wb, ab, limit, sites) for m in r.data["methods"] for wb, ab in widths]


def _sites(r: _Reader, model: str) -> tuple[tuple[str, str, int], ...]:
    """Per-site widths over WnAn, checked against the model's linears and activation points."""
    from ptq2rtl import flows
    from quant.plan import Sites, chosen_points, linears
    from quant.quantizers import QuantError

    s = _Reader(r.source, r.data["sites"], r.at("sites"), ("weights", "acts"))
    given = {k: s.data.get(k) or {} for k in ("weights", "acts")}
    for k, v in given.items():
        if not isinstance(v, dict):
            s.fail(s.at(k), f"must map a site to its bits, got {v!r}")
    spec = flows.load_spec(model)
    try:
        Sites(**given).check(linears(spec), chosen_points(spec, flows.calibration_batches(model)[0]))
    except QuantError as exc:
        s.fail(r.at("sites"), str(exc))
    return tuple(sorted((k, site, bits) for k, v in given.items() for site, bits in v.items()))


def _values(r: _Reader, key: str) -> list:
    """A grid axis: a list, one value, or a range ``{from, to, step}`` (arithmetic) / ``{from, to, times}``
    (geometric), both ends included."""
    v = r.data[key]
    if isinstance(v, list):
        if not v:
            r.fail(r.at(key), "empty list: nothing to explore")
        return v
    if not isinstance(v, dict):
        return [v]
    rng = _Reader(r.source, v, r.at(key), ("from", "to", "step", "times"))
    lo, hi, step, times = (v.get(k) for k in ("from", "to", "step", "times"))
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)):
        rng.fail(r.at(key), f"a range needs numbers 'from' and 'to', got {v!r}")
    if (step is None) == (times is None):
        rng.fail(r.at(key), "a range needs one of 'step' (arithmetic) or 'times' (geometric)")
    by = step if step is not None else times
    if isinstance(by, bool) or not isinstance(by, (int, float)) or by <= (0 if step is not None else 1):
        rng.fail(r.at(key), f"'step' must be a number > 0, 'times' a number > 1, got {by!r}")
    out, x = [], lo
    while x <= hi:
        out.append(x)
        x = x + step if step is not None else x * times
    if not out:
        rng.fail(r.at(key), f"empty range: 'from' {lo} is above 'to' {hi}")
    return out


def _base(r: _Reader, folder: Path) -> tuple[str, dict]:
    """The base description's name and YAML data: a bundled name, or a file relative to the spec."""
    base = r.data.get("base")
    if not isinstance(base, str) or not base:
        r.fail(r.at("base"), f"must name a bundled accelerator or a YAML file, got {base!r}")
    path = folder / base if Path(base).suffix else base
    try:
        accel = load_accel(path)
    except AccelError as exc:
        r.fail(r.at("base"), str(exc))
    return Path(base).stem, yaml.safe_load(Path(accel.source).read_text(encoding="utf-8"))


def _apply(data: dict, key: str, value, where: str, fail) -> None:
    """Set grid key ``key`` (a dotted field of the description, or ``array``) to ``value`` in ``data``."""
    if key == "array":
        found = re.fullmatch(r"(\d+)x(\d+)", value) if isinstance(value, str) else None
        if isinstance(value, int) and not isinstance(value, bool):
            rows = cols = value
        elif found:
            rows, cols = int(found[1]), int(found[2])
        else:
            fail(where, f"{value!r} is not an array shape ROWSxCOLS (e.g. 16x16)")
        data["array"].update(rows=rows, cols=cols)
        return
    *path, leaf = key.split(".")
    node = data
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
        fail(where, f"unknown field {key!r} of the base description (accepted: a dotted field such as "
                    f"'buffers.weight_kib' or 'units.requant.pow2_only', or {', '.join(SHORTHANDS)})")
    node[leaf] = value


def _accelerators(r: _Reader, folder: Path) -> list[AccelPoint]:
    """Every point of one block's grid over its base, each validated as ``sim.accel`` loads a file and checked
    against what the joined accelerator can be built from (``sim.machine.Geometry``)."""
    from sim.machine import Geometry

    base, data = _base(r, folder)
    grid = r.data.get("grid") or {}
    if not isinstance(grid, dict):
        r.fail(r.at("grid"), f"must map a field to its values, got {grid!r}")
    g = _Reader(r.source, grid, r.at("grid"), tuple(grid))
    axes = [(k, _values(g, k)) for k in grid]
    out = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        overrides = tuple((k, v) for (k, _), v in zip(axes, combo))
        point = copy.deepcopy(data)
        for k, v in overrides:
            if k != "lanes":
                _apply(point, k, v, g.at(k), g.fail)
        lanes = dict(overrides).get("lanes")
        if lanes is not None:  # after the array: "array" follows its final width
            if lanes != "array" and (isinstance(lanes, bool) or not isinstance(lanes, int)):
                g.fail(g.at("lanes"), f"must be an integer or 'array' (every unit as wide as the array), got {lanes!r}")
            for unit in point["units"].values():
                unit["lanes"] = point["array"]["cols"] if lanes == "array" else lanes
        label = " ".join([base] + [f"{k}={v}" for k, v in overrides])
        source = f"{r.source}: {r.where} point {label!r}"
        try:
            accel = parse_accel(point, source)
            Geometry.of(accel)
        except AccelError as exc:
            hint = " (give the grid 'lanes: array' to make every unit as wide as the array)" \
                if "vector width" in str(exc) else ""
            raise ExploreError(f"{exc if str(exc).startswith(source) else f'{source}: {exc}'}{hint}") from None
        out.append(AccelPoint(base, overrides, accel, point))
    return out


def _area(top: _Reader, value) -> AreaSpec | None:
    if value is False or value is None:
        return None
    if value is True:
        return AreaSpec()
    a = _Reader(top.source, value, "area", AREA_FIELDS)
    from hw.synth import TARGETS, part_of

    spec = AreaSpec(**value)
    if spec.target not in TARGETS or part_of(spec.target, spec.part) is None:
        a.fail("area.part", f"{spec.target} {spec.part} is not a part hw.synth places on (e.g. ecp5 85f)")
    if spec.design not in AREA_DESIGNS:
        a.fail("area.design", f"{spec.design!r} is not one of {', '.join(AREA_DESIGNS)}")
    return spec


# ------------------------------------------------------------------ the work: three pure functions
def quantize_point(pp: ProgramPoint) -> tuple:
    """Calibrate, lower and evaluate one program on the golden engine (and its plan under the paper protocol,
    ``paper_protocol`` in the record, where ``pp.paper``): ``(program, record)``. A plan the integer formats
    cannot hold gives ``(None, record)`` with the lowering's ``refused``, and its points are refused."""
    from ptq2rtl import flows
    from quant.lower import lower
    from quant.plan import Sites
    from quant.quantizers import QuantError
    from sim.program import ProgramError

    sites = Sites(weights={s: b for k, s, b in pp.sites if k == "weights"},
                  acts={s: b for k, s, b in pp.sites if k == "acts"})
    start = time.perf_counter()
    plan = flows.make_plan(pp.model, pp.method, pp.wbits, pp.abits, sites=sites or None, progress=False)
    try:
        program = lower(plan)
    except (QuantError, ProgramError) as exc:  # e.g. hvit's minilm W3A3: a residual scale ratio of 2**16
        return None, {**asdict(pp), "refused": f"not lowered: {exc}", "calib_seconds": plan.meta["calib_seconds"],
                      "seconds": round(time.perf_counter() - start, 2)}
    result = flows.evaluate_program(program, limit=pp.limit, progress=False)
    record = {**asdict(pp), "n": result["n"], **{k: result[k] for k in METRICS if k in result},
              "calib_seconds": plan.meta["calib_seconds"]}
    if pp.paper:
        paper = flows.evaluate_paper(plan, limit=pp.limit, progress=False)
        record["paper_protocol"] = {k: paper[k] for k in (*METRICS, "n") if k in paper}
    return program, {**record, "seconds": round(time.perf_counter() - start, 2)}


def price_point(program, accel: AccelConfig, seq_len: int) -> dict:
    """The cost of one inference on ``accel``, or why ``accel`` cannot run the program: the totals, and the
    cycles and energy by op class and the latency by layer."""
    from ptq2rtl.simulate import simulate_report

    try:
        if program is None:
            return {"refused": "no integer program (its record says why)"}
        sim = simulate_report(program, accel, seq_len=seq_len)  # refused by sim.accel.check_program first
    except AccelError as exc:
        return {"refused": str(exc)}
    return {"basis": sim["basis"]["kind"], **{k: sim[k] for k in COST_FIELDS + DETAIL_FIELDS},
            "op_classes": op_classes(sim),
            "layers": [{"name": layer["name"], "latency_s": layer["latency_s"]} for layer in sim["layers"]]}


def op_classes(sim: dict) -> dict:
    """Cycles and energy of a simulation grouped by the op registry's report class (linear, attention, ...)."""
    from sim.ops import OPS

    cycles: dict[str, int] = {}
    energy: dict[str, float] = {}
    for op in sim["ops"]:
        # the compiled schedule's instructions of no op (inputs loaded, outputs stored, end) are DRAM traffic
        c = OPS[op["kind"]].report_class if op["kind"] in OPS else "other"
        cycles[c] = cycles.get(c, 0) + op["cycles"]
        energy[c] = energy.get(c, 0.0) + op["energy_j"]
    return {"cycles": cycles, "energy_j": energy}


class _NotCached(Exception):
    pass


def _no_tools(*_args, **_kwargs):
    raise _NotCached


def cached_synthesis(accel: AccelConfig, area: AreaSpec, designs: list[str]) -> dict | None:
    """``hw.synth.synth``'s result for ``designs`` (units, or "accelerator") of ``accel``'s Verilog as far as its
    cache, then the shipped records, hold them: ``units`` has the designs found; None when none is. No tool runs:
    ``synth_unit`` starts yosys only when its key is not cached, and here that start raises instead."""
    from unittest import mock

    from hw import synth

    result, found = None, {}
    with mock.patch.object(synth, "_yosys", _no_tools):
        for d in designs:
            try:
                result = synth.synth(accel, area.target, units=[d], part=area.part, freq_mhz=area.freq_mhz,
                                     whole=False)
            except _NotCached:
                continue
            found.update(result["units"])
    return None if result is None else {**result, "units": found}


def area_of(accel: AccelConfig, area: AreaSpec) -> dict | None:
    """The synthesis figures ``hw.synth`` has for ``accel``'s Verilog (:func:`cached_synthesis`), or None where
    a design is missing (``ptq2rtl synth --accel FILE`` on the point's description fills the cache)."""
    from sim.accel import UNIT_PARAMS

    designs = list(UNIT_PARAMS) if area.design == "units" else ["accelerator"]
    r = cached_synthesis(accel, area, designs)
    if r is None or set(r["units"]) != set(designs):
        return None
    total = {k: sum(r["units"][d].get(k) or 0 for d in designs) for k in ("lut", "carry", "ff", "dsp", "bram")}
    # an ECP5 carry (CCU2C) takes two LUT4 sites, as nextpnr places it
    luts = total["lut"] + (2 * total["carry"] if area.target == "ecp5" else 0)
    return {"design": area.design, "part": r["part"], "luts": luts, **total}


# ------------------------------------------------------------------ files
def code_fingerprint() -> str:
    """The source every record depends on: quant/, sim/, the models and flows, the cost model's front end and
    this module (not configs/: a point hashes its accelerator itself, and a spec there must be able to grow
    without losing the points it had)."""
    files = sorted([*ROOT.glob("quant/**/*.py"), *ROOT.glob("sim/*.py"), *ROOT.glob("ptq2rtl/models/*.py")]
                   + [ROOT / "ptq2rtl" / f for f in ("flows.py", "corpus.py", "vit_digits.py", "simulate.py",
                                                     "explore.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Layout:
    """Where a run keeps its records, keyed by content hash."""

    out: Path

    def program(self, key: str) -> Path:
        return self.out / "cache" / "programs" / f"{key}.safetensors"

    def record(self, kind: str, key: str) -> Path:
        return self.out / "cache" / f"{kind}s" / f"{key}.json"

    def accelerator(self, a: AccelPoint) -> Path:
        return self.out / "accelerators" / f"{a.base}-{a.key}.yaml"


def area_key(a: AccelPoint, area: AreaSpec) -> str:
    from ptq2rtl.clocks import design_key  # unit parameters, buffers, array, hw/ source, Amaranth, part

    return _digest(design_key(a.accel, f"{area.target}-{area.part}"), asdict(area))


@dataclass
class Todo:
    """What a run has left to compute: program points, (program, accelerator) points, area lookups."""

    programs: list[ProgramPoint]
    points: list[tuple[ProgramPoint, AccelPoint]]
    areas: list[AccelPoint]

    def __len__(self) -> int:
        return len(self.programs) + len(self.points) + len(self.areas)


def todo(spec: Spec, files: Layout, fingerprint: str, data: dict[str, str]) -> Todo:
    """Everything whose record is not written yet."""
    pkey = {pp: pp.key(fingerprint + data[pp.model]) for pp in spec.programs}
    areas = {}
    if spec.area is not None:
        for a in spec.accels:
            k = area_key(a, spec.area)
            if k not in areas and not files.record("area", k).is_file():
                areas[k] = a
    return Todo([pp for pp in spec.programs if not files.record("program", pkey[pp]).is_file()],
                [(pp, a) for pp in spec.programs for a in spec.accels
                 if not files.record("point", point_key(pkey[pp], a, spec.seq_len)).is_file()],
                list(areas.values()))


def point_key(program_key: str, a: AccelPoint, seq_len: int) -> str:
    return _digest(program_key, a.key, seq_len)


# ------------------------------------------------------------------ running
@dataclass(frozen=True)
class Records:
    """The records of a computed spec, read back by key, and what computing it took."""

    files: Layout
    fingerprint: str
    data: dict[str, str]  #: model -> the fingerprint of its weights and data
    computed: dict[str, int]
    reused: dict[str, int]
    where: str

    def program_key(self, pp: ProgramPoint) -> str:
        return pp.key(self.fingerprint + self.data[pp.model])

    def program(self, pp: ProgramPoint) -> dict:
        return json.loads(self.files.record("program", self.program_key(pp)).read_text())

    def point(self, pp: ProgramPoint, a: AccelPoint, seq_len: int) -> dict:
        return json.loads(self.files.record("point", point_key(self.program_key(pp), a, seq_len)).read_text())


def compute(spec: Spec, out: str | Path, *, workers: int = 1, address: str | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> Records:
    """Compute the records ``out`` does not hold yet, on Ray (``workers`` CPUs of a local Ray, or the cluster at
    ``address``; ``workers=0``: in this process, one after the other). ``ptq2rtl report`` computes its entries
    here too."""
    from reports.report import data_fingerprint

    files = Layout(Path(out))
    fingerprint = code_fingerprint()
    data = {m: data_fingerprint(m) for m in dict.fromkeys(pp.model for pp in spec.programs)}
    left = todo(spec, files, fingerprint, data)
    total = {"programs": len(spec.programs), "points": len(spec.programs) * len(spec.accels),
             "areas": len({area_key(a, spec.area) for a in spec.accels}) if spec.area else 0}
    computed = {"programs": len(left.programs), "points": len(left.points), "areas": len(left.areas)}
    where = "in this process" if workers == 0 else address or f"local Ray, {workers} worker(s)"
    log(f"explore {spec.name}: {total['programs']} programs x {len(spec.accels)} accelerators = "
        f"{total['points']} points; to compute: {computed['programs']} programs, {computed['points']} points"
        + (f", {computed['areas']} area lookups" if spec.area else "") + f" ({where})")
    # Ray first: a cluster that cannot be reached leaves nothing written
    with _ray(workers, address) if len(left) and workers else contextlib.nullcontext() as ray:
        for sub in ("programs", "points", "areas"):
            (files.out / "cache" / sub).mkdir(parents=True, exist_ok=True)
        if ray is not None:
            _on_ray(ray, spec, left, files, fingerprint, data, progress=progress)
        elif len(left):
            _inline(spec, left, files, fingerprint, data, progress=progress)
    return Records(files, fingerprint, data, computed, {k: total[k] - computed[k] for k in total}, where)


def run(spec: Spec, out: str | Path, *, workers: int = 1, address: str | None = None, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
    """:func:`compute`, then write every point's accelerator description, the results table, the Pareto fronts'
    plots and the summary. Returns the results and what this run computed and reused."""
    from reports import explore as report

    start = time.perf_counter()
    done = compute(spec, out, workers=workers, address=address, progress=progress, log=log)
    files = done.files
    (files.out / "accelerators").mkdir(exist_ok=True)
    for a in spec.accels:
        if not files.accelerator(a).is_file():
            _atomic_write(files.accelerator(a), f"# {a.label} (ptq2rtl explore {spec.source})\n"
                                                + yaml.safe_dump(a.data, sort_keys=False))
    rows = collect(spec, files, done.fingerprint, done.data)
    seconds = round(time.perf_counter() - start, 1)
    stats = {"computed": done.computed, "reused": done.reused, "seconds": seconds, "where": done.where}
    written = report.write(spec, rows, files.out, stats)
    log(f"explore {spec.name}: {len(rows)} points ({sum(1 for r in rows if r['refused'])} refused) in {seconds} s; "
        f"wrote {', '.join(str(files.out / w) for w in written[:3])} and {len(written) - 3} more")
    return {"rows": rows, **stats}


def _save(files: Layout, kind: str, key: str, result, program=None) -> None:
    """One finished record, atomically (a program's file before its record: the record says it is complete)."""
    if program is not None:
        program.save(files.program(key))
    if result is not None:  # an area not in the cache is looked up again next run, not recorded as missing
        _atomic_write(files.record(kind, key), json.dumps(result, indent=1, sort_keys=True))


def _jobs(spec: Spec, left: Todo, fingerprint: str, data: dict[str, str]):
    """The keyed jobs in the order they are submitted: programs, then points, then area lookups."""
    pkey = {pp: pp.key(fingerprint + data[pp.model]) for pp in spec.programs}
    return ([("program", pkey[pp], pp) for pp in left.programs],
            [("point", point_key(pkey[pp], a, spec.seq_len), pkey[pp], a) for pp, a in left.points],
            [("area", area_key(a, spec.area), a) for a in left.areas])


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="explore", unit="job", disable=not progress, smoothing=0.1)


def _load(files: Layout, key: str):
    """A finished program read back, or None for one the lowering refused (its record alone is written)."""
    from sim.program import IntegerProgram

    path = files.program(key)
    return IntegerProgram.load(path) if path.is_file() else None


def _inline(spec: Spec, left: Todo, files: Layout, fingerprint: str, data: dict, *, progress: bool) -> None:
    programs, points, areas = _jobs(spec, left, fingerprint, data)
    loaded = {}
    with _bar(len(left), progress) as bar:
        for _, key, pp in programs:
            loaded[key], record = quantize_point(pp)
            _save(files, "program", key, record, loaded[key])
            bar.update()
        for _, key, pkey, a in points:
            if pkey not in loaded:
                loaded[pkey] = _load(files, pkey)
            _save(files, "point", key, price_point(loaded[pkey], a.accel, spec.seq_len))
            bar.update()
        for _, key, a in areas:
            _save(files, "area", key, area_of(a.accel, spec.area))
            bar.update()


@contextlib.contextmanager
def _ray(workers: int, address: str | None):
    """A Ray session: a local Ray with ``workers`` CPUs, or the cluster at ``address``; shut down on leaving."""
    import logging
    import warnings

    import ray

    try:
        with warnings.catch_warnings():  # Ray warns before it raises; the error below says it in one line
            warnings.simplefilter("ignore")
            if address:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=workers, include_dashboard=False,  # never a running cluster
                         logging_level=logging.ERROR, log_to_driver=False)
    except ImportError as exc:  # ray:// needs Ray's client (grpcio), which ray[client] brings
        raise ExploreError(f"cannot reach {address}: Ray's client is missing ({exc}): "
                           f"pip install 'ptq2rtl[explore]'") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ExploreError(f"cannot start Ray{f' at {address}' if address else ''}: "
                           f"{' '.join(str(exc).split())}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _on_ray(ray, spec: Spec, left: Todo, files: Layout, fingerprint: str, data: dict, *, progress: bool) -> None:
    """Submit every job as a Ray task (a point's task waits on its program's), write each record as it
    finishes. Ray schedules; the program reaches the point tasks through the object store, once."""
    from ptq2rtl.errors import user_errors

    quantize = ray.remote(num_cpus=1, num_returns=2)(quantize_point)
    price = ray.remote(num_cpus=1)(price_point)
    area = ray.remote(num_cpus=1)(area_of)
    programs, points, areas = _jobs(spec, left, fingerprint, data)
    refs, jobs = {}, {}
    for job in programs:
        refs[job[1]], record = quantize.remote(job[2])
        jobs[record] = job
    accel_refs = {}
    for job in points:
        _, _, pkey, a = job
        if pkey not in refs:
            refs[pkey] = ray.put(_load(files, pkey))
        if a.key not in accel_refs:
            accel_refs[a.key] = ray.put(a.accel)
        jobs[price.remote(refs[pkey], accel_refs[a.key], spec.seq_len)] = job
    for job in areas:
        jobs[area.remote(job[2].accel, spec.area)] = job
    pending = list(jobs)
    with _bar(len(pending), progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            record, key = jobs[ready[0]][:2]  # "program", "point" or "area"
            try:
                result = ray.get(ready[0])
                program = ray.get(refs[key]) if record == "program" else None
            except ray.exceptions.RayTaskError as exc:  # the worker's own error, one line when it is the user's
                cause = exc.cause
                raise cause if isinstance(cause, user_errors()) else exc
            _save(files, record, key, result, program)
            bar.update()


# ------------------------------------------------------------------ the table
def collect(spec: Spec, files: Layout, fingerprint: str, data: dict[str, str]) -> list[dict]:
    """One row per (program, accelerator) point in the spec's order, read back from the records."""
    from ptq2rtl.clocks import clock_status

    keys = spec.grid_keys
    clock = {a.key: clock_status(a.accel)["basis"] for a in spec.accels}
    rows = []
    for pp in spec.programs:
        pkey = pp.key(fingerprint + data[pp.model])
        prog = json.loads(files.record("program", pkey).read_text())
        metric = "top1" if models.model_info(pp.model).task == "image" else "cosine"
        for a in spec.accels:
            key = point_key(pkey, a, spec.seq_len)
            cost = json.loads(files.record("point", key).read_text())
            area_file = files.record("area", area_key(a, spec.area)) if spec.area else None
            area = json.loads(area_file.read_text()) if area_file and area_file.is_file() else {}
            over = dict(a.overrides)
            rows.append({
                "model": pp.model, "method": pp.method, "wbits": pp.wbits, "abits": pp.abits,
                "sites": " ".join(f"{s}:{k[0]}{b}" for k, s, b in pp.sites), "n": prog.get("n"),
                "metric": metric, "accuracy": prog.get(metric), **{m: prog.get(m) for m in METRICS},
                "accelerator": a.base, **{k: over.get(k) for k in keys},
                "accelerator_file": files.accelerator(a).relative_to(files.out).as_posix(),
                "clock_mhz": a.accel.clock_mhz, "clock": clock[a.key],
                "refused": prog.get("refused") or cost.get("refused"), "basis": cost.get("basis"),
                **{k: cost.get(k) for k in COST_FIELDS if k != "energy_breakdown_j"},
                "area": area.get("luts"), "area_design": area.get("design"),
                **{f"area_{k}": area.get(k) for k in ("lut", "carry", "ff", "dsp", "bram")},
                "program_key": pkey, "point_key": key,
                "energy_breakdown_j": cost.get("energy_breakdown_j"),
            })
    return rows
