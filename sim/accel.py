"""The accelerator description: a frozen dataclass loaded from YAML and validated on load.

One object parameterizes the cycle model (``sim/cycles.py``), the energy model
(``sim/energy.py``) and the Amaranth units (``hw/``), so a config change moves
all three together. ``load_accel("edge-int4")`` reads ``configs/edge-int4.yaml``;
any other argument is a path. A bad file gets an :class:`AccelError` naming the
file, the field and the accepted range.

:func:`check_program` decides whether an accelerator can run a program:

* Activations wider than an array port are split into digits and run as extra
  passes (see :func:`sim.timing.operand_digits`); an 8-bit image into the patch
  embedding takes two passes on an int4 array. Weights wider than the weight port
  are split into planes of signed digits (``sim.intops.weight_digit_planes``), each
  a pass against every activation digit: int6 weights take two on an int4 array
  (refused where the array's ``weight_bits`` and ``act_bits`` differ).
* The requantizer must hold every multiplier ``M`` in ``multiplier_bits``; a
  power-of-two-only requantizer (no multiplier) refuses dyadic requants and
  residual adds whose scale factors are not powers of two.
* Every other limit is a build parameter of a unit's RTL, read from the one
  function per unit that ``hw/<unit>.py``'s ``from_accel`` builds it with
  (:func:`mac_array_params`, :func:`requant_params`, :func:`softmax_params`,
  :func:`gelu_params`, :func:`layernorm_params`; ``AccelConfig.unit_params``):
  the GELU table's depth and entry width, the requantizer's per-channel table
  depth and output width, the softmax row buffer and its fixed fraction bits
  and code width, the LayerNorm row buffer, fraction bits and output width,
  the log2 codes the array decodes into shifts. A text program's softmax rows
  are as long as its token count, so ``seq_len`` (the run's tokens) is checked
  too when given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sim.energy import ACTIONS, PRESETS
from sim import timing, widths
from sim.ops import OPS
from sim.program import IntegerProgram
from sim.timing import ceil_div

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DATAFLOWS = ("weight_stationary",)
ARRAY_BITS = (4, 8)
#: what a description's clock is for: "asic" (an assumed design point) or an FPGA part -> (family, nextpnr part)
FPGA_TARGETS = {"ecp5-85f": ("ecp5", "LFE5U-85F"), "ecp5-45f": ("ecp5", "LFE5U-45F"),
                "ecp5-25f": ("ecp5", "LFE5U-25F"), "ice40-up5k": ("ice40", "iCE40UP5K")}
TARGETS = ("asic",) + tuple(FPGA_TARGETS)


class AccelError(ValueError):
    """A bad accelerator description, or a program this accelerator cannot run."""


@dataclass(frozen=True)
class ArrayConfig:
    """The MAC array: ``rows`` x ``cols`` PEs, signed operands, ``acc_bits`` accumulators."""

    rows: int
    cols: int
    dataflow: str
    weight_bits: int
    act_bits: int
    acc_bits: int


@dataclass(frozen=True)
class BufferConfig:
    """On-chip SRAM sizes in KiB."""

    weight_kib: int
    activation_kib: int
    accumulator_kib: int

    def bytes(self, buffer: str) -> int:
        return getattr(self, f"{buffer}_kib") * 1024


@dataclass(frozen=True)
class RequantConfig:
    """The requantizer: ``lanes`` elements per cycle, ``latency`` deep; ``pow2_only``: a shifter, no multiplier."""

    lanes: int
    latency: int
    multiplier_bits: int
    pow2_only: bool


@dataclass(frozen=True)
class VectorConfig:
    """A vector unit (softmax, LayerNorm): ``lanes`` elements per cycle, ``latency`` cycles of per-row work."""

    lanes: int
    latency: int


@dataclass(frozen=True)
class GeluConfig:
    """The GELU unit: a table of ``2**in_bits`` signed ``out_bits`` entries per lane."""

    lanes: int
    latency: int
    in_bits: int
    out_bits: int


@dataclass(frozen=True)
class EnergyConfig:
    """A named per-action energy preset (``sim.energy.PRESETS``) and per-action overrides in pJ."""

    preset: str
    overrides: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class AccelConfig:
    name: str
    clock_mhz: float
    dram_bytes_per_cycle: float
    array: ArrayConfig
    buffers: BufferConfig
    requant: RequantConfig
    softmax: VectorConfig
    gelu: GeluConfig
    layernorm: VectorConfig
    energy: EnergyConfig
    source: str = ""  #: the file it was loaded from
    #: what ``clock_mhz`` is for: "asic" (an assumption) or an FPGA part whose measured Fmax bounds it
    target: str = "asic"

    @property
    def pes(self) -> int:
        return self.array.rows * self.array.cols

    def unit_params(self, unit: str) -> dict:
        """The parameters ``hw/`` builds ``unit`` (a key of :data:`UNIT_PARAMS`) with on this accelerator."""
        return UNIT_PARAMS[unit](self)


# ------------------------------------------------------------------ loading
class _Fields:
    """Reads one mapping of the YAML, each error naming the file and the dotted field."""

    def __init__(self, source: str, data: Any, prefix: str = ""):
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            self.fail(prefix.rstrip(".") or "(top level)", f"must be a mapping, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def fail(self, field: str, problem: str):
        raise AccelError(f"{self.source}: field {field!r}: {problem}")

    def _get(self, key: str) -> Any:
        if key not in self.data:
            self.fail(self.prefix + key, "missing")
        self.used.add(key)
        return self.data[key]

    def int(self, key: str, lo: int, hi: int) -> int:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(self.prefix + key, f"must be an integer in [{lo}, {hi}], got {v!r}")
        if not lo <= v <= hi:
            self.fail(self.prefix + key, f"{v} outside the accepted range [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float, hi: float) -> float:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(self.prefix + key, f"must be a number in [{lo}, {hi}], got {v!r}")
        if not lo <= v <= hi:
            self.fail(self.prefix + key, f"{v} outside the accepted range [{lo}, {hi}]")
        return float(v)

    def choice(self, key: str, choices: tuple) -> Any:
        v = self._get(key)
        if v not in choices:
            self.fail(self.prefix + key, f"{v!r} is not one of {', '.join(map(repr, choices))}")
        return v

    def bool(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            self.fail(self.prefix + key, f"must be true or false, got {v!r}")
        return v

    def str(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str) or not v:
            self.fail(self.prefix + key, f"must be a non-empty string, got {v!r}")
        return v

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.source, self._get(key), self.prefix + key + ".")

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            self.fail(self.prefix + str(extra[0]), f"unknown field (accepted: {', '.join(sorted(self.used))})")


def _vector(f: _Fields, unit: str, cls=VectorConfig, **extra):
    """A unit's lanes and latency; the latency no lower than its RTL needs (``sim.timing.LATENCY_RANGE``)."""
    kw = {"lanes": f.int("lanes", 1, 256), "latency": f.int("latency", *timing.LATENCY_RANGE[unit])}
    kw.update({k: fn(f) for k, fn in extra.items()})
    f.done()
    return cls(**kw)


def _energy(f: _Fields) -> EnergyConfig:
    preset = f.choice("preset", tuple(PRESETS))
    overrides = {}
    if "overrides" in f.data and f.data["overrides"] is not None:
        o = f.sub("overrides")
        for key in list(o.data):
            if key not in ACTIONS:
                o.fail(o.prefix + str(key), f"unknown action (accepted: {', '.join(ACTIONS)})")
            overrides[key] = o.number(key, 0.0, 1e9)
        o.done()
    else:
        f.used.add("overrides")
    f.done()
    return EnergyConfig(preset, tuple(sorted(overrides.items())))


def parse_accel(data: Any, source: str = "<config>") -> AccelConfig:
    """Build and validate an :class:`AccelConfig` from the YAML's mapping."""
    top = _Fields(source, data)
    a = top.sub("array")
    array = ArrayConfig(rows=a.int("rows", 1, 256), cols=a.int("cols", 1, 256),
                        dataflow=a.choice("dataflow", DATAFLOWS), weight_bits=a.choice("weight_bits", ARRAY_BITS),
                        act_bits=a.choice("act_bits", ARRAY_BITS), acc_bits=a.choice("acc_bits", (widths.ACC_BITS,)))
    a.done()
    b = top.sub("buffers")
    buffers = BufferConfig(weight_kib=b.int("weight_kib", 1, 1 << 16), activation_kib=b.int("activation_kib", 1, 1 << 16),
                           accumulator_kib=b.int("accumulator_kib", 1, 1 << 16))
    b.done()
    u = top.sub("units")
    requant = _vector(u.sub("requant"), "requant", RequantConfig, multiplier_bits=lambda f: f.int("multiplier_bits", 1, 16),
                      pow2_only=lambda f: f.bool("pow2_only"))
    softmax = _vector(u.sub("softmax"), "softmax")
    gelu = _vector(u.sub("gelu"), "gelu", GeluConfig, in_bits=lambda f: f.int("in_bits", 2, widths.MAX_GELU_IN_BITS),
                   out_bits=lambda f: f.int("out_bits", 2, widths.GELU_OUT_BITS))
    layernorm = _vector(u.sub("layernorm"), "layernorm")
    u.done()
    cfg = AccelConfig(name=top.str("name"), clock_mhz=top.number("clock_mhz", 1.0, 10000.0),
                      dram_bytes_per_cycle=top.number("dram_bytes_per_cycle", 0.01, 4096.0),
                      array=array, buffers=buffers, requant=requant, softmax=softmax, gelu=gelu,
                      layernorm=layernorm, energy=_energy(top.sub("energy")), source=source,
                      target=top.choice("target", TARGETS) if "target" in top.data else "asic")
    top.done()
    acc_rows = buffers.bytes("accumulator") // (2 * array.cols * array.acc_bits // 8)
    if acc_rows < array.rows:
        top.fail("buffers.accumulator_kib", f"{buffers.accumulator_kib} KiB holds {acc_rows} double-buffered rows "
                 f"of {array.cols} accumulators; at least {array.rows} rows are needed "
                 f"(>= {ceil_div(2 * array.rows * array.cols * array.acc_bits // 8, 1024)} KiB)")
    return cfg


def load_accel(path_or_name: str | Path) -> AccelConfig:
    """Load ``configs/<name>.yaml`` for a bare name like ``"edge-int4"``, otherwise the file at the path."""
    p = Path(path_or_name)
    if not p.suffix and p.parent == Path(".") and not p.exists():
        p = CONFIG_DIR / f"{path_or_name}.yaml"
        if not p.is_file():
            known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
            raise AccelError(f"no accelerator named {str(path_or_name)!r} (bundled: {known}; or give a YAML path)")
    if not p.is_file():
        raise AccelError(f"{p}: no such accelerator description")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise AccelError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise AccelError(f"{p}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise AccelError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_accel(data, str(p))


# ------------------------------------------------------------------ the units' build parameters
# Sizes the description does not set; the RTL is built with them, and check_program holds programs to them.
REQUANT_CHANNELS = 2048  #: entries of the requantizer's per-channel (M, shift, zero point) table
SHIFT_BITS = 6  #: shift amounts of the requantizer and the LayerNorm affine (up to 63 >= widths.MAX_SHIFT)
SOFTMAX_MAX_LEN = 256  #: the longest row the softmax unit's row buffer holds
LAYERNORM_MAX_N = 1024  #: the widest row (channels) the LayerNorm unit's row buffer holds
LOG2_CODE_BITS = 4  #: the log2 attention codes the softmax unit writes and the array decodes into shifts
MAC_MAX_K = 4096  #: reduction terms the array's accumulator buffer adds exactly


def mac_array_params(a: AccelConfig) -> dict:
    """``hw.mac_array.MacArray``: the array's shape and widths; its accumulator buffer holds the rows the
    accumulator SRAM holds (double-buffered, so half of it per fold)."""
    arr = a.array
    return dict(rows=arr.rows, cols=arr.cols, act_bits=arr.act_bits, weight_bits=arr.weight_bits,
                acc_bits=arr.acc_bits, max_m=a.buffers.bytes("accumulator") // (2 * arr.cols * arr.acc_bits // 8),
                max_k=MAC_MAX_K, log2=True, code_bits=LOG2_CODE_BITS)


def requant_params(a: AccelConfig) -> dict:
    """``hw.requant.Requantizer``: reads the array's accumulators, writes up to the residual stream's width."""
    rq = a.requant
    return dict(in_bits=a.array.acc_bits, out_bits=widths.RESIDUAL_BITS, mult_bits=rq.multiplier_bits,
                shift_bits=SHIFT_BITS, lanes=rq.lanes, channels=REQUANT_CHANNELS, pow2=rq.pow2_only,
                latency=rq.latency)


def softmax_params(a: AccelConfig) -> dict:
    """``hw.softmax.SoftmaxLog2``: fixed input grid (``SOFTMAX_FRAC_BITS``), code width and ROMs."""
    return dict(in_bits=widths.SOFTMAX_IN_BITS, max_len=SOFTMAX_MAX_LEN, lanes=a.softmax.lanes,
                code_bits=LOG2_CODE_BITS, frac_bits=widths.SOFTMAX_FRAC_BITS, exp_bits=widths.SOFTMAX_EXP_BITS,
                log_bits=widths.SOFTMAX_LOG_BITS, latency=a.softmax.latency)


def gelu_params(a: AccelConfig) -> dict:
    """``hw.gelu.Gelu``: a table of ``2**in_bits`` signed ``out_bits`` entries per lane."""
    g = a.gelu
    return dict(in_bits=g.in_bits, out_bits=g.out_bits, lanes=g.lanes, latency=g.latency)


def layernorm_params(a: AccelConfig) -> dict:
    """``hw.layernorm.LayerNorm``: int16 in and out, and the fewest divider bits a cycle that meet the
    configured latency."""
    lat = a.layernorm.latency
    ks = range(1, timing.LN_MAX_STEPS_PER_CYCLE + 1)
    k = next((k for k in ks if timing.layernorm_latency(widths.LN_IN_BITS, widths.LN_RECIP_BITS, k) <= lat), None)
    if k is None:
        raise AccelError(f"{a.name}: field 'units.layernorm.latency': {lat} is below the fastest LayerNorm unit "
                         f"the RTL builds ({timing.LATENCY_RANGE['layernorm'][0]} cycles)")
    return dict(in_bits=widths.LN_IN_BITS, out_bits=widths.RESIDUAL_BITS, max_n=LAYERNORM_MAX_N,
                lanes=a.layernorm.lanes, frac_bits=widths.LN_NORM_FRAC_BITS, recip_bits=widths.LN_RECIP_BITS,
                gamma_bits=widths.LN_GAMMA_BITS, beta_bits=widths.LN_BETA_BITS, shift_bits=SHIFT_BITS,
                steps_per_cycle=k, latency=lat)


#: the name of the whole design that joins the units (``hw.accelerator``): its Verilog module, its synthesis row
ACCELERATOR = "accelerator"
#: unit name (as ``hw.verilog.UNITS``) -> its build parameters on an accelerator
UNIT_PARAMS = {"mac_array": mac_array_params, "requant": requant_params, "softmax": softmax_params,
               "gelu": gelu_params, "layernorm": layernorm_params}


# ------------------------------------------------------------------ programs
def _refuse(program: IntegerProgram, accel: AccelConfig, op, field: str, problem: str):
    raise AccelError(f"{accel.name} cannot run program {program.model!r}: op {op.name!r} ({op.kind}): "
                     f"field {field!r}: {problem}")


def check_program(program: IntegerProgram, accel: AccelConfig, seq_len: int | None = None) -> None:
    """Raise :class:`AccelError` if some op does not fit the units ``hw/`` builds for ``accel`` (``sim.ops``
    refusals). ``seq_len``: the token count of a text program's run (its run-time dimensions); without it
    only the fixed dimensions are checked."""
    for op in program.ops:
        refused = OPS[op.kind].refusal(op, program, accel, seq_len)
        if refused is not None:
            _refuse(program, accel, op, *refused)
