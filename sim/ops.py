"""The op registry: every op kind of an IntegerProgram, declared once.

An :class:`OpKind` says, for one kind of op:

* what a well-formed op looks like: its attributes and parameters, how many
  inputs it takes, and :meth:`OpKind.check` — the shape and width rule that
  validates the op against the widths its inputs are declared with and
  returns the shape and value range of each output;
* its integer semantics, :meth:`OpKind.run`: a call into ``sim.intops``;
* the unit that runs it on the accelerator and its cost hook,
  :meth:`OpKind.cost`: how it uses the array, the vector units, the buffers
  and DRAM (``sim.cycles``), counted as energy actions (``sim.energy``);
  :meth:`OpKind.param_bytes` and :meth:`OpKind.refusal` (what an accelerator
  cannot run: the limits are the build parameters of the unit's RTL,
  ``AccelConfig.unit_params``);
* how its traces are cut into vectors of an RTL bench, :meth:`OpKind.trace`;
* the class the report groups it under.

The engine (``sim.engine``), validation (``sim.program.validate``), the cycle
and energy models, the accelerator check, the trace writer
(``rtl_tests.traces``) and the report read :data:`OPS`; nothing else
dispatches on an op's kind. Adding a kind is one subclass and
:func:`register`.

Validation keeps one invariant that the engine relies on: every value of a
tensor lies in the range its declaration (bits, signedness) gives. Each kind
checks that its inputs' declared ranges are ones its unit accepts, and says
which range its outputs can take; the declared output must hold that range.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sim import intops, timing, widths
from sim.program import Op, ProgramError, TensorSpec
from sim.timing import ceil_div, operand_digits

if TYPE_CHECKING:
    from sim.accel import AccelConfig
    from sim.cycles import OpCost, _Mapper, _Plan
    from sim.program import IntegerProgram

Shape = tuple  # of int | None; None is a dimension fixed at run time (tokens)


@dataclass(frozen=True)
class Value:
    """What validation knows of a tensor: its shape (no batch dim) and the closed range of its values."""

    name: str
    shape: Shape
    lo: int
    hi: int
    zero_point: int = 0

    @classmethod
    def of(cls, spec: TensorSpec, shape: Shape) -> "Value":
        lo, hi = intops.int_range(spec.bits, spec.signed)
        return cls(spec.name, shape, lo, hi, spec.zero_point)

    def width(self) -> str:
        return f"[{self.lo}, {self.hi}]"


def _range(bits: int, signed: bool = True) -> tuple[int, int]:
    return intops.int_range(bits, signed)


class Check:
    """Validation of one op: every failure is a ProgramError naming the op, the field and the accepted range."""

    def __init__(self, op: Op):
        self.op = op

    def fail(self, fieldname: str, problem: str):
        raise ProgramError(f"op {self.op.name!r} ({self.op.kind}): field {fieldname!r}: {problem}")

    def attr(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer attribute in ``[lo, hi]`` (either end open when None)."""
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(key, f"{v} outside the accepted range [{lo}, {'...' if hi is None else hi}]")
        return v

    def flag(self, key: str, default: bool | None = None) -> bool:
        if key not in self.op.attrs and default is not None:
            return default
        v = self._get(key)
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false, got {v!r}")
        return v

    def int_list(self, key: str, lo: int = 1) -> list[int]:
        v = self._get(key)
        if not isinstance(v, list) or not v or any(isinstance(e, bool) or not isinstance(e, int) or e < lo for e in v):
            self.fail(key, f"must be a non-empty list of integers >= {lo}, got {v!r}")
        return v

    def _get(self, key: str) -> Any:
        if key not in self.op.attrs:
            self.fail(key, "missing attribute")
        return self.op.attrs[key]

    def param(self, key: str, ndim: int | None, lo: int, hi: int, what: str) -> np.ndarray:
        """An integer array parameter with ``ndim`` dimensions (any when None) and values in ``[lo, hi]``."""
        if key not in self.op.params:
            self.fail(key, "missing parameter")
        a = self.op.params[key]
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.integer):
            self.fail(key, f"must be an integer array, got {getattr(a, 'dtype', type(a).__name__)}")
        if ndim is not None and a.ndim != ndim:
            self.fail(key, f"must have {ndim} dimension(s), got shape {a.shape}")
        if a.size == 0:
            self.fail(key, f"is empty (shape {a.shape})")
        amin, amax = int(a.min()), int(a.max())
        if amin < lo or amax > hi:
            self.fail(key, f"values outside {what} [{lo}, {hi}] (found {amin if amin < lo else amax})")
        return a

    def within(self, x: Value, lo: int, hi: int, what: str, fieldname: str = "inputs") -> None:
        """The declared range of input ``x`` must lie inside what the unit accepts."""
        if x.lo < lo or x.hi > hi:
            self.fail(fieldname, f"input {x.name!r} holds values in {x.width()}, {what} accepts [{lo}, {hi}]")

    def rank(self, x: Value, lo: int, hi: int | None = None) -> None:
        n = len(x.shape)
        if n < lo or (hi is not None and n > hi):
            want = f"exactly {lo}" if hi == lo else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            self.fail("inputs", f"input {x.name!r} has shape {x.shape}; this op takes {want} dimension(s)")

    def symmetric(self, x: Value) -> None:
        if x.zero_point != 0:
            self.fail("inputs", f"operands must be symmetric; {x.name!r} has zero point {x.zero_point}")

    def same_dims(self, a: Shape, b: Shape, what: str) -> None:
        if len(a) != len(b) or not all(same(x, y) for x, y in zip(a, b)):
            self.fail("inputs", f"{what}: {a} vs {b}")


def same(a: int | None, b: int | None) -> bool:
    """Two dimensions agree (a run-time dimension agrees with anything)."""
    return a is None or b is None or a == b


def _out(x: Value, shape: Shape | None = None, lo: int | None = None, hi: int | None = None) -> Value:
    """An output like ``x`` (views keep their input's values), with a new shape or range."""
    return Value("", x.shape if shape is None else shape, x.lo if lo is None else lo, x.hi if hi is None else hi)


def _acc_out(shape: Shape) -> Value:
    return Value("", shape, *_range(widths.ACC_BITS))


class OpKind:
    """One kind of op. Subclasses set the class attributes and override what their kind does."""

    kind: ClassVar[str]
    arity: ClassVar[tuple[int, int]] = (1, 1)  #: least and most inputs
    attrs: ClassVar[tuple[str, ...]] = ()  #: attributes every op of the kind carries
    optional_attrs: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[str, ...]] = ()  #: integer arrays every op of the kind carries
    optional_params: ClassVar[tuple[str, ...]] = ()
    unit: ClassVar[str] = "none"  #: array, requant, softmax, gelu, layernorm, dram or none (views)
    role: ClassVar[str] = "stream"  #: array (accumulates in the accumulator buffer), view (moves nothing), stream
    headwise: ClassVar[bool] = False  #: runs one (sample, head) at a time inside the attention core
    fuses_after: ClassVar[str | None] = None  #: the unit whose result it can take straight from the drain pipeline
    bench: ClassVar[str | None] = None  #: the RTL bench its traces feed
    report_class: ClassVar[str] = "other"
    #: how ``sim.compile`` lowers the kind to accelerator instructions: its compiler's ``_lower_<lowering>``
    #: (``_forward_<lowering>`` / ``_inverse_<lowering>`` for views: where the view lies in ABUF); None with
    #: ``not_compiled`` saying why the compiler refuses the kind
    lowering: ClassVar[str | None] = None
    not_compiled: ClassVar[str] = ""
    widening: ClassVar[bool] = False  #: a view whose input is a part of its output (laid out from the output)

    # ---------------------------------------------------------------- validation
    def check(self, c: Check, ins: list[Value]) -> list[Value]:
        """Validate attributes, parameters and input widths; return each output's shape and value range."""
        raise NotImplementedError

    # ---------------------------------------------------------------- semantics
    def run(self, op: Op, args: list[np.ndarray], ctx) -> list[np.ndarray]:
        """The op's integer outputs for a batch of inputs (each [B, ...]).

        ``ctx.accumulator(op, acc)`` saturates an array op's accumulator, counting what saturated.
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- cost
    def cost(self, m: "_Mapper", c: "OpCost", i: int, op: Op, fused: bool) -> None:
        """Fill ``c`` (compute cycles, MACs, energy actions, DRAM bytes) for op ``i`` of the plan."""

    def param_bytes(self, op: Op, plan: "_Plan") -> dict[str, int]:
        """Bytes of each parameter as the accelerator stores it (read from DRAM once per inference)."""
        return {}

    def row_bits(self, op: Op) -> int | None:
        """Bits one row of channels of the op's output occupies in the activation buffer and DRAM where its
        unit packs channels narrower than the declared width (None: the declared width each)."""
        return None

    def refusal(self, op: Op, program: "IntegerProgram", accel: "AccelConfig",
                seq_len: int | None = None) -> tuple[str, str] | None:
        """``(field, problem)`` if the units ``hw/`` builds for ``accel`` (``accel.unit_params``) cannot run
        this op, else None; ``seq_len`` fixes a text program's run-time token dimension (None: unchecked)."""
        return None

    def uncompiled(self, op: Op) -> tuple[str, str] | None:
        """``(field, why)`` if ``sim.compile`` does not lower this op (yet), else None: by default a kind
        without a ``lowering``, for the reason ``not_compiled`` gives. The cost model then estimates."""
        return ("kind", self.not_compiled) if self.lowering is None else None

    # ---------------------------------------------------------------- RTL traces
    def trace(self, op: Op, ins: list[np.ndarray], outs: list[np.ndarray], rng: np.random.Generator) -> dict:
        """Keyword arguments of the bench's segment builder (``rtl_tests.vectors``) for sampled traced values.

        Implementations check that the sampled outputs are what ``sim.intops``
        computes from the sampled inputs, so a wrong cut is never written.
        """
        raise NotImplementedError


OPS: dict[str, OpKind] = {}


def register(cls: type[OpKind]) -> type[OpKind]:
    """Class decorator: add an op kind to :data:`OPS` (a kind is registered once)."""
    if cls.kind in OPS:
        raise ValueError(f"op kind {cls.kind!r} is already registered")
    OPS[cls.kind] = cls()
    return cls


def _agree(op: Op, traced: np.ndarray, recomputed: np.ndarray) -> None:
    if not np.array_equal(np.asarray(traced), np.asarray(recomputed)):
        raise RuntimeError(f"trace of op {op.name!r} ({op.kind}): the extracted vectors do not reproduce the "
                           f"engine's outputs")


def _sample_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = x.reshape(-1, x.shape[-1])
    return rng.choice(rows.shape[0], min(n, rows.shape[0]), replace=False)


def _sample_elems(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(x.size, min(n, x.size), replace=False)


TRACE_ELEMS = 512  #: elements sampled per traced requant / GELU op
TRACE_ROWS = 6  #: rows sampled per traced softmax / LayerNorm op
TRACE_GEMM_ROWS, TRACE_GEMM_COLS = 6, 8  #: output rows and channels sampled per traced array op (the whole K)


# ==================================================================== the MAC array
class _ArrayOp(OpKind):
    unit = "array"
    role = "array"
    bench = "mac_array"
    report_class = "attention"

    def cost(self, m, c, i, op, fused):
        m.array_product(c, i, op, *self.streams(op, m.plan))

    def streams(self, op: Op, plan: "_Plan") -> tuple[int, int, str]:
        """Output columns, digit passes of the streamed operand, and the PE action of a product."""
        raise NotImplementedError

    @staticmethod
    def _cut(op, x, w, b, out, rng) -> dict:
        """A few output rows and channels of a product ``x @ w.T + b`` over its whole reduction."""
        rows = rng.choice(x.shape[0], min(TRACE_GEMM_ROWS, x.shape[0]), replace=False)
        cols = rng.choice(w.shape[0], min(TRACE_GEMM_COLS, w.shape[0]), replace=False)
        _agree(op, out[rows][:, cols], intops.linear(x[rows], w[cols], b[cols]))
        return dict(x=x[rows], w=w[cols], b=b[cols], mode=0)


@register
class Linear(_ArrayOp):
    kind = "linear"
    lowering = "linear"
    attrs = ("wbits", "abits")
    params = ("weight", "bias")
    report_class = "linear"

    def check(self, c, ins):
        wbits = c.attr("wbits", 2, widths.MAX_WEIGHT_BITS)
        abits = c.attr("abits", 2, widths.MAX_ACT_BITS)
        w = c.param("weight", 2, *_range(wbits), f"int{wbits} range")
        b = c.param("bias", 1, *_range(widths.ACC_BITS), f"int{widths.ACC_BITS} range")
        if b.shape[0] != w.shape[0]:
            c.fail("bias", f"has {b.shape[0]} entries for {w.shape[0]} output channels")
        x = ins[0]
        c.rank(x, 1)
        c.within(x, -(1 << (abits - 1)), (1 << abits) - 1, f"a linear with abits={abits}")
        if not same(x.shape[-1], w.shape[1]):
            c.fail("weight", f"expects {w.shape[1]} input features, input {x.name!r} has shape {x.shape}")
        return [_acc_out(x.shape[:-1] + (w.shape[0],))]

    def run(self, op, args, ctx):
        return [ctx.accumulator(op, intops.accumulate(args[0], op.params["weight"], op.params["bias"]))]

    def cost(self, m, c, i, op, fused):
        m.linear(c, i, op)

    def param_bytes(self, op, plan):
        """Weights as the accelerator stores them: ``wbits`` each, or where they are wider than the array's
        weight port, one port-wide digit a plane (``sim.intops.weight_digit_planes``)."""
        n, k = op.params["weight"].shape[0], op.params["weight"][0].size
        port = plan.a.array.weight_bits
        planes = intops.weight_digits(op.params["weight"], port)
        bits = op.attrs["wbits"] if planes == 1 else port * planes
        return {"weight": ceil_div(n * k * bits, 8), "bias": ceil_div(n * plan.a.array.acc_bits, 8)}

    def refusal(self, op, program, accel, seq_len=None):
        wbits, arr = op.attrs["wbits"], accel.unit_params("mac_array")
        port = arr["weight_bits"]
        if wbits > port and port != arr["act_bits"]:
            return "wbits", (f"int{wbits} weights are wider than the {port}-bit weight port, and weight digit "
                             f"passes need weight_bits = act_bits (here {arr['act_bits']}); quantize with "
                             f"--wbits {port} or use an accelerator with weight_bits >= {wbits}")
        return None

    def trace(self, op, ins, outs, rng):
        x = ins[0].reshape(-1, ins[0].shape[-1])
        out = outs[0].reshape(-1, outs[0].shape[-1])
        return self._cut(op, x, op.params["weight"], op.params["bias"], out, rng)


@register
class Conv2d(_ArrayOp):
    """A convolution on channels-last activations [H, W, C], lowered onto the array as the products of its
    patches (im2col): a group's patch rows ``kh*kw*C/groups`` long stream against its ``O/groups`` filters.

    Padding is explicit (top, bottom, left, right: TensorFlow's 'SAME' pads a stride-2 convolution more at
    the bottom and right) and fills with ``pad_value``, the input's zero point, so a zero-point correction
    folded into the bias is exact at the borders too.
    """

    kind = "conv2d"
    attrs = ("wbits", "abits", "stride", "padding", "groups", "pad_value")
    params = ("weight", "bias")
    report_class = "conv"
    lowering = "conv2d"

    def uncompiled(self, op):
        groups, (o, _, _, cg) = op.attrs["groups"], op.params["weight"].shape
        if groups > 1 and not (cg == 1 and groups == o):
            return "groups", "grouped convolutions other than depthwise (one filter a channel) are not compiled yet"
        return None

    def check(self, c, ins):
        wbits = c.attr("wbits", 2, widths.MAX_WEIGHT_BITS)
        abits = c.attr("abits", 2, widths.MAX_ACT_BITS)
        stride = c.int_list("stride")
        padding = c.int_list("padding", lo=0)
        groups = c.attr("groups", 1)
        if len(stride) != 2:
            c.fail("stride", f"must be [rows, columns], got {stride}")
        if len(padding) != 4:
            c.fail("padding", f"must be [top, bottom, left, right], got {padding}")
        w = c.param("weight", 4, *_range(wbits), f"int{wbits} range")
        b = c.param("bias", 1, *_range(widths.ACC_BITS), f"int{widths.ACC_BITS} range")
        o, kh, kw, cg = w.shape
        if b.shape[0] != o:
            c.fail("bias", f"has {b.shape[0]} entries for {o} output channels")
        if o % groups:
            c.fail("groups", f"{groups} groups do not divide the {o} output channels")
        x = ins[0]
        c.rank(x, 3, 3)
        h, wd, ch = x.shape
        if None in (h, wd, ch):
            c.fail("inputs", f"a convolution's input {x.name!r} needs a fixed size, got {x.shape}")
        if ch != cg * groups:
            c.fail("weight", f"{groups} group(s) of {cg} input channels, input {x.name!r} has {ch}")
        c.within(x, -(1 << (abits - 1)), (1 << abits) - 1, f"a convolution with abits={abits}")
        c.attr("pad_value", x.lo, x.hi)
        ho = intops.conv_out_size(h, kh, stride[0], padding[0], padding[1])
        wo = intops.conv_out_size(wd, kw, stride[1], padding[2], padding[3])
        if ho < 1 or wo < 1:
            c.fail("weight", f"a {kh}x{kw} kernel does not fit the padded {h}x{wd} input {x.name!r}")
        return [_acc_out((ho, wo, o))]

    @staticmethod
    def geometry(op: Op) -> tuple[tuple[int, int], tuple[int, int, int, int], int, int]:
        a = op.attrs
        return tuple(a["stride"]), tuple(a["padding"]), a["groups"], a["pad_value"]

    def run(self, op, args, ctx):
        stride, padding, groups, pad_value = self.geometry(op)
        acc = intops.conv2d_accumulate(args[0], op.params["weight"], op.params["bias"], stride, padding, groups,
                                       pad_value)
        return [ctx.accumulator(op, acc)]

    def cost(self, m, c, i, op, fused):
        m.conv(c, i, op)

    param_bytes = Linear.param_bytes
    refusal = Linear.refusal

    def trace(self, op, ins, outs, rng):  # one group's patch rows against its filters: an ordinary product
        stride, padding, groups, pad_value = self.geometry(op)
        w = op.params["weight"]
        o, kh, kw, cg = w.shape
        per = o // groups
        g = int(rng.integers(0, groups))
        patches = intops.im2col(ins[0], (kh, kw), stride, padding, pad_value)[..., g * cg:(g + 1) * cg]
        x = patches.reshape(-1, kh * kw * cg)
        out = outs[0][..., g * per:(g + 1) * per].reshape(-1, per)
        return self._cut(op, x, w[g * per:(g + 1) * per].reshape(per, -1), op.params["bias"][g * per:(g + 1) * per],
                         out, rng)


@register
class Project(Conv2d):
    """A channel projection ``z = P x`` (a 1x1 convolution, stride 1, no padding, one group) that the array
    runs on its producer's drain: the producer's requantized rows pass, one m-tile of every channel at a
    time, through a staging tile of the activation buffer into this product, so ``x`` is never stored
    whole, in the activation buffer or in DRAM; only ``z`` is.

    The array is busy with the producer, so the projection adds its own cycles (nothing overlaps). A
    producer with groups (a depthwise convolution) then runs its groups inside each m-tile rather than
    around them: the same products and weight loads (its weights fit the weight buffer), so the same
    cycles in this model.
    """

    kind = "project"
    fuses_after = "requant"
    lowering = None
    not_compiled = ("a projection fused onto its producer's drain is not compiled (the compiler stores every "
                    "requantized tensor in the activation buffer)")

    def check(self, c, ins):
        out = super().check(c, ins)
        w = c.op.params["weight"]
        if w.shape[1:3] != (1, 1) or c.op.attrs["stride"] != [1, 1] or any(c.op.attrs["padding"]) or \
                c.op.attrs["groups"] != 1:
            c.fail("weight", f"a projection is a 1x1 convolution, stride 1, no padding, one group; got kernel "
                             f"{w.shape[1]}x{w.shape[2]}, stride {c.op.attrs['stride']}, padding "
                             f"{c.op.attrs['padding']}, groups {c.op.attrs['groups']}")
        return out

    def uncompiled(self, op):  # the compiler's convolution would store x whole
        return OpKind.uncompiled(self, op)

    def cost(self, m, c, i, op, fused):
        m.conv(c, i, op)
        if fused:  # the producer's drain writes each tile to the staging area this product reads
            c.count("sram_activation_write", m.plan.nbytes(op.inputs[0]))


def _check_pair(c: Check, a: Value, b: Value, kb: int | None) -> None:
    """Activation x activation: equal leading dimensions, matching inner dimension."""
    c.rank(a, 2)
    c.rank(b, 2)
    c.same_dims(a.shape[:-2], b.shape[:-2], f"leading dimensions of {a.name!r} and {b.name!r} differ")
    if not same(a.shape[-1], kb):
        c.fail("inputs", f"inner dimensions differ: {a.name!r} {a.shape} x {b.name!r} {b.shape}")


@register
class Matmul(_ArrayOp):
    kind = "matmul"
    lowering = "matmul"
    arity = (2, 2)
    attrs = ("transpose_b",)
    headwise = True

    def check(self, c, ins):
        a, b = ins
        tb = c.flag("transpose_b")
        for x in ins:
            c.symmetric(x)
            c.within(x, *_range(widths.MAX_ACT_BITS), f"a matmul operand (at most int{widths.MAX_ACT_BITS})")
        _check_pair(c, a, b, (b.shape[-1] if tb else b.shape[-2]) if len(b.shape) >= 2 else None)
        n = b.shape[-2] if tb else b.shape[-1]
        return [_acc_out(a.shape[:-1] + (n,))]

    def run(self, op, args, ctx):
        b = np.swapaxes(args[1], -1, -2) if op.attrs["transpose_b"] else args[1]
        return [ctx.accumulator(op, intops.exact_matmul(args[0], b))]

    def streams(self, op, plan):  # Q.K^T: K^T is stationary, the query rows stream on the activation port
        b = plan.dims[op.inputs[1]]
        a = plan.p.tensors[op.inputs[0]]
        pa = intops.signed_digits(a.bits, plan.a.array.act_bits, a.signed)
        return (b[-2] if op.attrs["transpose_b"] else b[-1]), pa, "mac"

    def trace(self, op, ins, outs, rng):  # one (sample, head); the second operand is the stationary one
        a, b = ins
        idx = tuple(int(rng.integers(0, d)) for d in a.shape[:-2])
        x, b, out = a[idx], b[idx], outs[0][idx]
        w = b if op.attrs["transpose_b"] else b.T
        return self._cut(op, x, w, np.zeros(w.shape[0], np.int64), out, rng)


@register
class MatmulLog2(_ArrayOp):
    kind = "matmul_log2"
    lowering = "matmul_log2"
    arity = (2, 2)
    attrs = ("code_bits",)
    optional_attrs = ("sqrt2",)
    headwise = True

    def check(self, c, ins):
        codes, v = ins
        cb = c.attr("code_bits", 2, widths.MAX_CODE_BITS)
        c.flag("sqrt2", False)
        c.within(codes, 0, (1 << cb) - 1, f"{cb}-bit log2 codes")
        c.symmetric(v)
        c.within(v, *_range(widths.MAX_ACT_BITS), f"V (at most int{widths.MAX_ACT_BITS})")
        _check_pair(c, codes, v, v.shape[-2] if len(v.shape) >= 2 else None)
        return [_acc_out(codes.shape[:-1] + (v.shape[-1],))]

    def run(self, op, args, ctx):
        w = intops.log2_weights(args[0], op.attrs["code_bits"], op.attrs.get("sqrt2", False))
        return [ctx.accumulator(op, intops.exact_matmul(w, args[1]))]

    def streams(self, op, plan):  # V is stationary; codes stream in and each PE shifts instead of multiplying
        action = "shift_mac_sqrt2" if op.attrs.get("sqrt2") else "shift_mac"
        return plan.dims[op.inputs[1]][-1], 1, action

    def refusal(self, op, program, accel, seq_len=None):
        cb, unit = op.attrs["code_bits"], accel.unit_params("mac_array")["code_bits"]
        if cb != unit:  # code c weighs V by 2**(2**cb - 2 - c): the array's shifts are built for one width
            return "code_bits", (f"{cb}-bit log2 codes; the array decodes {unit}-bit codes into shifts "
                                 f"(accepted: code_bits = {unit})")
        return None

    def trace(self, op, ins, outs, rng):
        a, bm = ins
        idx = tuple(int(rng.integers(0, d)) for d in a.shape[:-2])
        x, v, out = a[idx], bm[idx], outs[0][idx]
        sqrt2 = bool(op.attrs.get("sqrt2", False))
        rows = rng.choice(x.shape[0], min(TRACE_GEMM_ROWS, x.shape[0]), replace=False)
        cols = rng.choice(v.shape[1], min(TRACE_GEMM_COLS, v.shape[1]), replace=False)
        _agree(op, out[rows][:, cols], intops.matmul_log2(x[rows], v[:, cols], op.attrs["code_bits"], sqrt2=sqrt2))
        return dict(x=x[rows], w=v.T[cols], b=np.zeros(len(cols), np.int64), mode=2 if sqrt2 else 1)


# ==================================================================== the MAC array's binary modes
#: the mac_array bench's mode of each binary mode (``rtl_tests.vectors.gemm_case``; 0-2: plain, log2, sqrt2)
BINARY_BENCH_MODE = {"xnor": 3, "and": 4}
_NOT_COMPILED_BINARY = ("the MAC array's binary modes (XNOR- / AND-popcount) and their compares are not in the "
                        "instruction set yet; the cost model estimates them")


def _mode(c: Check) -> str:
    v = c._get("mode")
    if v not in intops.BINARY_MODES:
        c.fail("mode", f"{v!r} is not a binary mode (accepted: {', '.join(intops.BINARY_MODES)})")
    return v


def _check_key_mask(c: Check, t: Value, ins: list[Value]) -> None:
    """The optional second input of an attention map: one flag a key of the scores ``t``."""
    if len(ins) == 2:
        mask = ins[1]
        c.rank(mask, 1, 1)
        if not same(mask.shape[0], t.shape[-1]):
            c.fail("inputs", f"key mask {mask.name!r} {mask.shape} does not match scores {t.name!r} {t.shape}")


def _bits_in(c: Check, x: Value, what: str) -> None:
    c.within(x, 0, 1, f"{what} (1-bit operands)")


class _BinaryArrayOp(_ArrayOp):
    """A product in one of the array's binary modes: each PE sums ``sim.timing.binary_pack`` 1-bit products a
    cycle (XNOR or AND of its packed operands, then a popcount) where it would make one integer product."""

    lowering = None
    not_compiled = _NOT_COMPILED_BINARY
    report_class = "binary"

    @staticmethod
    def pack(m: "_Mapper") -> int:
        return timing.binary_pack(m.a.array.act_bits, m.a.array.weight_bits)


@register
class BinaryLinear(_BinaryArrayOp):
    """A linear layer on 1-bit operands: ``weight`` [N, K] sign bits (1: +1, 0: -1) against input bits (sign
    bits in ``xnor`` mode, {0,1} in ``and`` mode), plus an optional int32 ``bias``; the real-valued scales of
    the weights and the input live in the requantizer (or the threshold) that reads the accumulator."""

    kind = "binary_linear"
    attrs = ("mode",)
    params = ("weight",)
    optional_params = ("bias",)
    report_class = "linear"

    def check(self, c, ins):
        _mode(c)
        w = c.param("weight", 2, 0, 1, "sign bits")
        if "bias" in c.op.params:
            b = c.param("bias", 1, *_range(widths.ACC_BITS), f"int{widths.ACC_BITS} range")
            if b.shape[0] != w.shape[0]:
                c.fail("bias", f"has {b.shape[0]} entries for {w.shape[0]} output channels")
        x = ins[0]
        c.rank(x, 1)
        _bits_in(c, x, "a binary linear")
        if not same(x.shape[-1], w.shape[1]):
            c.fail("weight", f"expects {w.shape[1]} input features, input {x.name!r} has shape {x.shape}")
        return [_acc_out(x.shape[:-1] + (w.shape[0],))]

    @staticmethod
    def product(op: Op):
        return intops.xnor_popcount if op.attrs["mode"] == "xnor" else intops.and_popcount

    def run(self, op, args, ctx):
        return [ctx.accumulator(op, self.product(op)(args[0], op.params["weight"], op.params.get("bias")))]

    def cost(self, m, c, i, op, fused):
        n, k = op.params["weight"].shape
        rows = m.plan.batch * int(np.prod(m.plan.dims[op.inputs[0]][:-1]))
        m.weight_product(c, i, op, rows, k, n, 1, pack=self.pack(m), action="binary_mac")

    def param_bytes(self, op, plan):  # one bit a weight
        n, k = op.params["weight"].shape
        bias = ceil_div(n * plan.a.array.acc_bits, 8) if "bias" in op.params else 0
        return {"weight": ceil_div(n * k, 8), "bias": bias}

    def trace(self, op, ins, outs, rng):
        x = ins[0].reshape(-1, ins[0].shape[-1])
        out = outs[0].reshape(-1, outs[0].shape[-1])
        w = op.params["weight"]
        b = op.params.get("bias", np.zeros(w.shape[0], np.int64))
        rows = rng.choice(x.shape[0], min(TRACE_GEMM_ROWS, x.shape[0]), replace=False)
        cols = rng.choice(w.shape[0], min(TRACE_GEMM_COLS, w.shape[0]), replace=False)
        _agree(op, out[rows][:, cols], self.product(op)(x[rows], w[cols], b[cols]))
        return dict(x=x[rows], w=w[cols], b=b[cols], mode=BINARY_BENCH_MODE[op.attrs["mode"]])


@register
class BinaryMatmul(_BinaryArrayOp):
    """Activation x activation in a binary mode, per (sample, head): Q.K^T of sign bits (``xnor``), or a
    binary attention map times V's sign bits (``and``); the second operand is the stationary one."""

    kind = "binary_matmul"
    arity = (2, 2)
    attrs = ("mode", "transpose_b")
    headwise = True
    report_class = "attention"

    def check(self, c, ins):
        _mode(c)
        a, b = ins
        tb = c.flag("transpose_b")
        for x in ins:
            _bits_in(c, x, "a binary matmul")
        _check_pair(c, a, b, (b.shape[-1] if tb else b.shape[-2]) if len(b.shape) >= 2 else None)
        return [_acc_out(a.shape[:-1] + ((b.shape[-2] if tb else b.shape[-1]),))]

    def run(self, op, args, ctx):
        b = np.swapaxes(args[1], -1, -2) if op.attrs["transpose_b"] else args[1]
        return [ctx.accumulator(op, intops.binary_matmul(args[0], b, op.attrs["mode"]))]

    def cost(self, m, c, i, op, fused):
        b = m.plan.dims[op.inputs[1]]
        n = b[-2] if op.attrs["transpose_b"] else b[-1]
        m.array_product(c, i, op, n, 1, "binary_mac", pack=self.pack(m))

    def trace(self, op, ins, outs, rng):
        a, b = ins
        idx = tuple(int(rng.integers(0, d)) for d in a.shape[:-2])
        x, b, out = a[idx], b[idx], outs[0][idx]
        w = b if op.attrs["transpose_b"] else b.T
        rows = rng.choice(x.shape[0], min(TRACE_GEMM_ROWS, x.shape[0]), replace=False)
        cols = rng.choice(w.shape[0], min(TRACE_GEMM_COLS, w.shape[0]), replace=False)
        _agree(op, out[rows][:, cols], intops.binary_matmul(x[rows], w[cols].T, op.attrs["mode"]))
        return dict(x=x[rows], w=w[cols], b=np.zeros(len(cols), np.int64), mode=BINARY_BENCH_MODE[op.attrs["mode"]])


class _CompareOp(OpKind):
    """One compare an element on the requantizer's lanes, taken straight from the array's drain where it alone
    reads an accumulator; its 1-bit output is what the binary modes stream."""

    unit = "requant"
    headwise = True
    fuses_after = "array"
    report_class = "binary"
    not_compiled = _NOT_COMPILED_BINARY

    def cost(self, m, c, i, op, fused):
        n = m.plan.numel(op.inputs[0])
        m.stream(c, i, op, m.a.requant, n, fused)
        if fused:
            c.count("sram_accumulator_read", n * m.acc_bytes)
        c.count(self.kind, n)


@register
class Binarize(_CompareOp):
    """Sign bits of an integer tensor: ``x >= threshold`` (per channel, or one threshold), ``sim.intops.binarize``.
    A real-valued scale and bias in front of the sign fold into the threshold: ``sign(a * x + b)`` for a > 0 is
    ``x >= ceil(-b / a)`` exactly."""

    kind = "binarize"
    params = ("threshold",)

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 1)
        c.within(x, *_range(widths.ACC_BITS), f"a compare (at most int{widths.ACC_BITS})")
        t = c.param("threshold", 1, *_range(widths.ACC_BITS), f"int{widths.ACC_BITS} range")
        if t.shape[0] != 1 and not same(x.shape[-1], t.shape[0]):
            c.fail("threshold", f"{t.shape[0]} channels, input {x.name!r} has shape {x.shape}")
        return [Value("", x.shape, 0, 1)]

    def run(self, op, args, ctx):
        return [intops.binarize(args[0], op.params["threshold"])]

    def param_bytes(self, op, plan):
        return {"threshold": ceil_div(op.params["threshold"].size * widths.ACC_BITS, 8)}


@register
class BiAttention(_CompareOp):
    """Bi-Attention's binary attention map in place of softmax: ``scores >= threshold`` for the keys the mask
    lets take part (``sim.intops.bi_attention``); it weighs V through the array's ``and`` mode."""

    kind = "bi_attention"
    arity = (1, 2)
    attrs = ("threshold",)

    def check(self, c, ins):
        c.attr("threshold", *_range(widths.ACC_BITS))
        t = ins[0]
        c.rank(t, 1)
        c.within(t, *_range(widths.ACC_BITS), f"a compare (at most int{widths.ACC_BITS})")
        _check_key_mask(c, t, ins)
        return [Value("", t.shape, 0, 1)]

    def run(self, op, args, ctx):
        valid = _key_mask(args[1], args[0].ndim) if len(args) > 1 else None
        return [intops.bi_attention(args[0], valid, op.attrs["threshold"])]


# ==================================================================== the requantizer and its lanes
@register
class Requant(OpKind):
    kind = "requant"
    lowering = "requant"
    attrs = ("out_bits", "signed", "zero_point", "pow2")
    params = ("m", "shift")
    #: ``pack_bits`` / ``pack_shift``: group-wise packing (``sim.intops.pack_channels``), channel c kept as a
    #: ``pack_bits[c]``-wide integer ``pack_shift[c]`` bits up the output's grid (0 bits: the channel dropped)
    optional_params = ("zero_points", "pack_bits", "pack_shift")
    unit = "requant"
    headwise = True
    fuses_after = "array"
    bench = "requant"
    report_class = "requant"

    def check(self, c, ins):
        out_bits = c.attr("out_bits", 2, widths.MAX_TENSOR_BITS)
        signed = c.flag("signed")
        pow2 = c.flag("pow2")
        lo, hi = _range(out_bits, signed)
        c.attr("zero_point", lo, hi)
        m = c.param("m", 1, 0, (1 << widths.REQUANT_M_BITS) - 1, f"{widths.REQUANT_M_BITS}-bit unsigned multipliers")
        shift = c.param("shift", 1, 0, widths.MAX_SHIFT, "shift amounts")
        if m.shape != shift.shape:
            c.fail("shift", f"shape {shift.shape} differs from m's {m.shape}")
        if "zero_points" in c.op.params:
            zps = c.param("zero_points", 1, lo, hi, f"the output's int{out_bits} range")
            if zps.shape != m.shape:
                c.fail("zero_points", f"shape {zps.shape} differs from m's {m.shape}")
        if pow2 and (np.any(m < 1) or np.any(m & (m - 1))):
            c.fail("m", "a power-of-two requantizer has only powers of two (shifts) as M")
        if pow2 and np.any((m > 1) & (shift > 0)):
            c.fail("shift", "a power-of-two requantizer shifts one way: M > 1 with a right shift")
        x = ins[0]
        c.within(x, *_range(widths.ACC_BITS), f"the requantizer (int{widths.ACC_BITS} accumulators)")
        if m.shape[0] != 1 and (not x.shape or not same(x.shape[-1], m.shape[0])):
            c.fail("m", f"{m.shape[0]} channels, input {x.name!r} has shape {x.shape}")
        if "pack_bits" in c.op.params or "pack_shift" in c.op.params:
            self._check_pack(c, x, out_bits)
        return [Value("", x.shape, lo, hi)]

    @staticmethod
    def _check_pack(c: Check, x: Value, out_bits: int) -> None:
        """Packing needs one width and one shift per channel that together stay inside the output's width,
        on a grid without zero point (a dropped channel reads as 0)."""
        bits = c.param("pack_bits", 1, 0, out_bits, f"widths of an int{out_bits} output")
        shift = c.param("pack_shift", 1, 0, out_bits, f"shifts inside an int{out_bits} output")
        if bits.shape != shift.shape:
            c.fail("pack_shift", f"shape {shift.shape} differs from pack_bits' {bits.shape}")
        if not x.shape or not same(x.shape[-1], bits.shape[0]):
            c.fail("pack_bits", f"{bits.shape[0]} channels, input {x.name!r} has shape {x.shape}")
        if np.any(bits + shift > out_bits):
            worst = int(np.argmax(bits + shift))
            c.fail("pack_shift", f"channel {worst}: {int(bits[worst])} bits shifted by {int(shift[worst])} "
                                 f"exceed the int{out_bits} output")
        if c.op.attrs["zero_point"] != 0 or "zero_points" in c.op.params:
            c.fail("zero_point", "a packed output has zero point 0 (accepted: 0, no zero_points)")

    @staticmethod
    def packed(op: Op) -> bool:
        return "pack_bits" in op.params

    def run(self, op, args, ctx):
        a, p = op.attrs, op.params
        zp = p["zero_points"] if "zero_points" in p else a["zero_point"]
        y = intops.requantize(args[0], p["m"], p["shift"], a["out_bits"], zp, a["signed"])
        if self.packed(op):
            y = intops.pack_channels(y, p["pack_bits"], p["pack_shift"], a["signed"])
        return [y]

    def row_bits(self, op):
        return int(op.params["pack_bits"].sum()) if self.packed(op) else None

    def uncompiled(self, op):
        if self.packed(op):
            return "pack_bits", ("group-wise packing of a requantizer's output (per-channel widths) is not "
                                 "compiled: the accelerator's requantizer has no packer yet")
        return super().uncompiled(op)

    def cost(self, m, c, i, op, fused):
        n = m.plan.numel(op.inputs[0])
        m.stream(c, i, op, m.a.requant, n, fused)
        if fused:  # drains the accumulator buffer
            c.count("sram_accumulator_read", n * m.acc_bytes)
        c.count("requant_pow2" if op.attrs["pow2"] else "requant", n)

    def param_bytes(self, op, plan):  # per channel: M (unless pow2), a 6-bit shift, a zero point if per channel
        a, p = op.attrs, op.params
        bits = 6 + (0 if a["pow2"] else plan.a.requant.multiplier_bits)
        bits += a["out_bits"] if "zero_points" in p else 0
        out = {"table": ceil_div(p["m"].size * bits, 8)}
        if self.packed(op):  # a width and a shift per channel, each up to the output's width
            out["pack"] = ceil_div(p["pack_bits"].size * 2 * a["out_bits"].bit_length(), 8)
        return out

    def refusal(self, op, program, accel, seq_len=None):
        u, m = accel.unit_params("requant"), op.params["m"]
        in_bits, out_bits = program.tensors[op.inputs[0]].bits, op.attrs["out_bits"]
        if in_bits > u["in_bits"]:
            return "inputs", (f"{in_bits}-bit input is wider than the {u['in_bits']}-bit accumulators the "
                              f"requantizer reads (accepted: <= {u['in_bits']})")
        if u["pow2"] and not op.attrs["pow2"]:
            return "pow2", ("a dyadic requant (M != 1) on a power-of-two-only requantizer, which has no "
                            "multiplier (accepted: pow2 = true); quantize with power-of-two scales")
        if int(m.max()) >= 1 << u["mult_bits"]:
            return "m", (f"multiplier {int(m.max())} does not fit the requantizer's {u['mult_bits']}-bit "
                         f"multipliers (accepted: [0, {(1 << u['mult_bits']) - 1}])")
        if m.shape[0] > u["channels"]:
            return "m", (f"{m.shape[0]} per-channel entries do not fit the requantizer's {u['channels']}-entry "
                         f"channel table (accepted: <= {u['channels']} channels)")
        if out_bits > u["out_bits"]:
            return "out_bits", (f"{out_bits}-bit outputs are wider than the requantizer's {u['out_bits']}-bit "
                                f"output (accepted: out_bits <= {u['out_bits']})")
        return None

    def trace(self, op, ins, outs, rng):
        if self.packed(op):
            raise NotImplementedError(f"op {op.name!r}: the requant bench has no packer; a packed requant "
                                      f"({self.uncompiled(op)[1]}) has no RTL trace")
        a, p = op.attrs, op.params
        x = ins[0].reshape(-1, ins[0].shape[-1])
        ch_count = x.shape[1]
        flat = _sample_elems(x, TRACE_ELEMS, rng)
        zp = p["zero_points"] if "zero_points" in p else np.full(ch_count, a["zero_point"])
        m, shift, zp = (np.broadcast_to(t, (ch_count,)) for t in (p["m"], p["shift"], zp))
        ch = flat % ch_count
        xs = x.ravel()[flat]
        _agree(op, outs[0].ravel()[flat], intops.requantize(xs, m[ch], shift[ch], a["out_bits"], zp[ch], a["signed"]))
        return dict(x=xs, ch=ch, m=m, shift=shift, zp=zp, out_width=a["out_bits"], out_signed=a["signed"])


class _LaneOp(OpKind):
    """Element-wise ops the cost model runs on the requantizer's lanes."""

    unit = "requant"
    report_class = "residual"
    beats_per_element = 1  #: lane beats per element

    def cost(self, m, c, i, op, fused):  # the energy action has the kind's name
        n = m.plan.numel(op.inputs[0])
        m.stream(c, i, op, m.a.requant, self.beats_per_element * n, fused=False)
        c.count(self.kind, n)


def _adder_refusal(op, program) -> tuple[str, str] | None:
    """The vector adder takes operands of at most :data:`sim.widths.ADDER_IN_BITS` (the residual stream)."""
    for name in op.inputs:
        bits = program.tensors[name].bits
        if bits > widths.ADDER_IN_BITS:
            return "inputs", (f"{name!r} is int{bits}, wider than the vector adder's int{widths.ADDER_IN_BITS} "
                              f"operands (accepted: <= {widths.ADDER_IN_BITS} bits)")
    return None


@register
class Add(_LaneOp):
    kind = "add"
    lowering = "add"
    arity = (2, 2)
    attrs = ("ma", "mb", "shift", "out_bits")
    beats_per_element = 2  # the two operands are scaled one after the other

    def check(self, c, ins):
        for key in ("ma", "mb"):
            c.attr(key, 0, (1 << widths.REQUANT_M_BITS) - 1)
        c.attr("shift", 0, widths.MAX_SHIFT)
        out_bits = c.attr("out_bits", 2, widths.MAX_TENSOR_BITS)
        a, b = ins
        for x in ins:
            c.within(x, *_range(widths.ACC_BITS), f"the residual adder (at most int{widths.ACC_BITS})")
        c.same_dims(a.shape, b.shape, "shapes differ")
        return [Value("", a.shape, *_range(out_bits))]

    def run(self, op, args, ctx):
        a = op.attrs
        return [intops.add(args[0], args[1], a["ma"], a["mb"], a["shift"], a["out_bits"])]

    def refusal(self, op, program, accel, seq_len=None):
        if refused := _adder_refusal(op, program):
            return refused
        u = accel.unit_params("requant")
        for key in ("ma", "mb"):
            v = op.attrs[key]
            if u["pow2"] and v & (v - 1):
                return key, (f"scale factor {v} is not a power of two, and the power-of-two-only requantizer "
                             "that runs residual adds has no multiplier")
            if not u["pow2"] and v >= 1 << u["mult_bits"]:
                return key, (f"{v} does not fit the requantizer's {u['mult_bits']}-bit multipliers "
                             f"(accepted: [0, {(1 << u['mult_bits']) - 1}])")
        return None


def signed_bits(lo: int, hi: int) -> int:
    """Width of the narrowest two's complement integer holding [lo, hi]."""
    return max((-lo - 1).bit_length() if lo < 0 else 0, max(hi, 0).bit_length()) + 1


@register
class AddConst(_LaneOp):
    kind = "add_const"
    lowering = "add_const"
    attrs = ("out_bits",)
    params = ("const",)

    def check(self, c, ins):
        out_bits = c.attr("out_bits", 2, widths.MAX_TENSOR_BITS)
        x = ins[0]
        c.within(x, *_range(widths.ACC_BITS), f"a constant add (at most int{widths.ACC_BITS})")
        k = c.param("const", None, *_range(widths.ACC_BITS), f"int{widths.ACC_BITS} range")
        if k.ndim > len(x.shape) or not all(same(a, b) for a, b in zip(x.shape[::-1], k.shape[::-1])):
            c.fail("const", f"shape {k.shape} does not broadcast onto {x.name!r} {x.shape}")
        return [Value("", x.shape, *_range(out_bits))]

    def run(self, op, args, ctx):
        return [intops.add_const(args[0], op.params["const"], op.attrs["out_bits"])]

    def refusal(self, op, program, accel, seq_len=None):
        if refused := _adder_refusal(op, program):
            return refused
        k = op.params["const"]
        lo, hi = _range(widths.ADDER_IN_BITS)
        if k.size and (int(k.min()) < lo or int(k.max()) > hi):
            return "const", (f"constant in [{int(k.min())}, {int(k.max())}] does not fit the vector adder's "
                             f"int{widths.ADDER_IN_BITS} operands (accepted: [{lo}, {hi}])")
        return None

    def param_bytes(self, op, plan):
        k = op.params["const"]
        return {"const": ceil_div(k.size * signed_bits(int(k.min()), int(k.max())), 8)}


@register
class MeanPool(_LaneOp):
    kind = "mean_pool"
    not_compiled = "mean pooling is not compiled yet (no vector unit of the ISA pools rows)"
    arity = (1, 2)  # rows, optionally a mask of the valid ones (all rows without it: global average pooling)
    #: fractional bits the mean keeps (a CNN's pooled features feed the classifier on a grid 2**-frac_bits
    #: finer than the feature map's; 0: the input's grid)
    optional_attrs = ("frac_bits",)
    report_class = "other"

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 2)
        if len(ins) == 2:
            mask = ins[1]
            c.rank(mask, 1, 1)
            if not same(x.shape[-2], mask.shape[0]):
                c.fail("inputs", f"mask {mask.name!r} {mask.shape} does not match the rows of {x.name!r} {x.shape}")
        f = c.attr("frac_bits", 0, widths.RESIDUAL_BITS - 1) if "frac_bits" in c.op.attrs else 0
        lo, hi = _range(widths.RESIDUAL_BITS)
        # a mean stays in its input's range, scaled by 2**frac_bits, saturated to the residual width
        return [Value("", x.shape[:-2] + (x.shape[-1],), max(x.lo << f, lo), min(x.hi << f, hi))]

    def run(self, op, args, ctx):
        return [intops.mean_pool(args[0], np.asarray(args[1]) != 0 if len(args) > 1 else None,
                                 frac_bits=op.attrs.get("frac_bits", 0))]


@register
class MaxPool(_LaneOp):
    """Max pooling of a channels-last feature map on the vector lanes: one compare a tap."""

    kind = "max_pool"
    attrs = ("kernel", "stride", "padding")
    report_class = "other"
    not_compiled = "max pooling is not compiled yet (no vector unit of the ISA compares windows)"

    def check(self, c, ins):
        k = c.attr("kernel", 1, 16)
        s = c.attr("stride", 1, 16)
        padding = c.int_list("padding", lo=0)
        if len(padding) != 4 or max(padding) >= k:
            c.fail("padding", f"must be [top, bottom, left, right], each below the kernel ({k}), got {padding}")
        x = ins[0]
        c.rank(x, 3, 3)
        h, w, ch = x.shape
        ho, wo = intops.conv_out_size(h, k, s, *padding[:2]), intops.conv_out_size(w, k, s, *padding[2:])
        if ho < 1 or wo < 1:
            c.fail("kernel", f"a {k}x{k} window does not fit the padded {h}x{w} input {x.name!r}")
        return [_out(x, (ho, wo, ch))]

    def run(self, op, args, ctx):
        a = op.attrs
        return [intops.max_pool2d(args[0], a["kernel"], a["stride"], tuple(a["padding"]))]

    def cost(self, m, c, i, op, fused):  # every output element compares kernel**2 taps
        n = m.plan.numel(op.outputs[0])
        m.stream(c, i, op, m.a.requant, n * op.attrs["kernel"] ** 2, fused=False)
        c.count("max_pool", n * op.attrs["kernel"] ** 2)


# ==================================================================== softmax, GELU, LayerNorm units
def _key_mask(mask: np.ndarray, ndim: int) -> np.ndarray:
    """[B, T] key mask -> boolean mask broadcastable onto [B, ..., Tq, Tk] scores."""
    m = np.asarray(mask) != 0
    return m.reshape(m.shape[:1] + (1,) * (ndim - 2) + m.shape[1:])


@register
class SoftmaxLog2(OpKind):
    kind = "softmax_log2"
    lowering = "softmax"
    arity = (1, 2)  # scores, optionally a key mask
    attrs = ("code_bits", "frac_bits")
    optional_attrs = ("sqrt2",)
    #: window attention (Swin): a bias added to the scores (the relative position bias on their log2 grid),
    #: and the region id of each token of a shifted window (keys of another region are masked)
    optional_params = ("bias", "regions")
    unit = "softmax"
    headwise = True
    bench = "softmax"
    report_class = "softmax"

    def check(self, c, ins):
        cb = c.attr("code_bits", 2, widths.MAX_CODE_BITS)
        c.attr("frac_bits", 1, 10)
        c.flag("sqrt2", False)
        t = self._check_scores(c, ins)
        if "bias" in c.op.params:
            bias = c.param("bias", None, *_range(widths.SOFTMAX_IN_BITS), f"int{widths.SOFTMAX_IN_BITS} range")
            if bias.ndim > len(t.shape) or not all(same(a, b) for a, b in zip(t.shape[::-1], bias.shape[::-1])):
                c.fail("bias", f"shape {bias.shape} does not broadcast onto scores {t.name!r} {t.shape}")
        if "regions" in c.op.params:
            regions = c.param("regions", 2, *_range(widths.WINDOW_REGION_BITS, False),
                              f"{widths.WINDOW_REGION_BITS}-bit region ids")
            c.rank(t, 4)
            if not (same(t.shape[-4], regions.shape[0]) and same(t.shape[-2], regions.shape[1])
                    and same(t.shape[-1], regions.shape[1])):
                c.fail("regions", f"shape {regions.shape} (windows, tokens) does not match scores {t.name!r} "
                                  f"{t.shape} (windows, heads, tokens, tokens)")
        return [Value("", t.shape, 0, (1 << cb) - 1)]

    @staticmethod
    def _check_scores(c, ins) -> Value:
        """The scores (int16 in the softmax unit's log2 units) and the optional key mask, one flag a key."""
        t = ins[0]
        c.rank(t, 1)
        c.within(t, *_range(widths.SOFTMAX_IN_BITS), f"the softmax unit (int{widths.SOFTMAX_IN_BITS} scores)")
        _check_key_mask(c, t, ins)
        return t

    @staticmethod
    def _scores(op, args) -> tuple[np.ndarray, np.ndarray | None]:
        """The scores the unit's row buffer holds (bias added) and the mask of the keys taking part."""
        t, valid = intops.window_scores(args[0], op.params.get("bias"), op.params.get("regions"))
        if len(args) > 1:
            keys = _key_mask(args[1], t.ndim)
            valid = keys if valid is None else keys & valid
        return t, valid

    def run(self, op, args, ctx):
        a = op.attrs
        t, valid = self._scores(op, args)
        return [intops.softmax_log2(t, valid, a["code_bits"], a["frac_bits"], sqrt2=a.get("sqrt2", False))]

    def param_bytes(self, op, plan):  # int16 bias entries, region ids
        p = op.params
        return {"bias": ceil_div(p["bias"].size * widths.SOFTMAX_IN_BITS, 8) if "bias" in p else 0,
                "regions": ceil_div(p["regions"].size * widths.WINDOW_REGION_BITS, 8) if "regions" in p else 0}

    def uncompiled(self, op):
        for key in ("bias", "regions"):
            if key in op.params:
                return key, ("window attention's score bias and region masks are not compiled yet (the "
                             "instruction set's softmax has no bias adder or region comparator)")
        return super().uncompiled(op)

    def cost(self, m, c, i, op, fused):
        m.rows_unit(c, i, op, m.a.softmax, timing.softmax_row_cycles, "softmax")

    def refusal(self, op, program, accel, seq_len=None):
        u = accel.unit_params("softmax")
        cb = op.attrs["code_bits"]
        if op.attrs["frac_bits"] != u["frac_bits"]:
            return self._frac_refusal(op, u)
        if cb != u["code_bits"]:
            return "code_bits", (f"{cb}-bit codes; the softmax unit writes {u['code_bits']}-bit log2 codes "
                                 f"(accepted: code_bits = {u['code_bits']})")
        return self._row_refusal(op, program, u, seq_len)

    @staticmethod
    def _frac_refusal(op, u) -> tuple[str, str]:
        return "frac_bits", (f"scores with {op.attrs['frac_bits']} fractional bits; the softmax unit's exp and log2 "
                             f"ROMs are built for {u['frac_bits']} (accepted: frac_bits = {u['frac_bits']})")

    @staticmethod
    def _row_refusal(op, program, u, seq_len):
        scores = program.tensors[op.inputs[0]]
        row = scores.shape[-1] if scores.shape[-1] is not None else seq_len
        if row is not None and row > u["max_len"]:
            at = f" at {seq_len} tokens" if scores.shape[-1] is None else ""
            return "inputs", (f"rows of {row} scores in {scores.name!r}{at} do not fit the softmax unit's "
                              f"{u['max_len']}-entry row buffer (accepted: rows <= {u['max_len']})")
        return None

    def _traced_rows(self, op, ins, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled rows as the unit holds them (bias added), their key masks, and which rows they are."""
        t, valid = self._scores(op, ins)
        mask = np.ones(t.shape, bool) if valid is None else np.broadcast_to(valid, t.shape)
        rows = t.reshape(-1, t.shape[-1])
        return rows, mask.reshape(rows.shape), _sample_rows(t, TRACE_ROWS, rng)

    def trace(self, op, ins, outs, rng):
        rows, mask, pick = self._traced_rows(op, ins, rng)
        sqrt2 = bool(op.attrs.get("sqrt2", False))
        _agree(op, outs[0].reshape(rows.shape)[pick],
               intops.softmax_log2(rows[pick], mask[pick], op.attrs["code_bits"], op.attrs["frac_bits"], sqrt2=sqrt2))
        return dict(t=rows[pick], mask=mask[pick], sqrt2=sqrt2)


@register
class SoftmaxTulq(SoftmaxLog2):
    """Softmax through the truncated uniform-log2 quantizer (``sim.intops.softmax_tulq``): levels on a
    ``2**-grid_bits`` grid that P.V multiplies as an ordinary ``matmul`` operand (in digit passes)."""

    kind = "softmax_tulq"
    lowering = "softmax_tulq"
    attrs = ("knee", "step_bits", "grid_bits", "frac_bits")
    optional_attrs = ("sqrt2",)  #: the log region in half steps (base sqrt(2))
    optional_params = ()
    bench = "softmax"

    def check(self, c, ins):
        grid = c.attr("grid_bits", 1, widths.MAX_TULQ_GRID_BITS)
        step = c.attr("step_bits", 0, min(grid, widths.SOFTMAX_EXP_BITS - 1))
        c.attr("knee", 0, step)
        c.attr("frac_bits", 1, 10)
        c.flag("sqrt2", False)
        t = self._check_scores(c, ins)
        return [Value("", t.shape, 0, 1 << grid)]

    @staticmethod
    def _levels(op) -> dict:
        a = op.attrs
        return dict(knee=a["knee"], step_bits=a["step_bits"], grid_bits=a["grid_bits"], sqrt2=a.get("sqrt2", False))

    def run(self, op, args, ctx):
        t, valid = self._scores(op, args)
        return [intops.softmax_tulq(t, valid, frac_bits=op.attrs["frac_bits"], **self._levels(op))]

    def param_bytes(self, op, plan):
        return {}

    def cost(self, m, c, i, op, fused):
        m.rows_unit(c, i, op, m.a.softmax, functools.partial(timing.softmax_row_cycles, tulq=True), "softmax")

    def refusal(self, op, program, accel, seq_len=None):
        u = accel.unit_params("softmax")
        if op.attrs["frac_bits"] != u["frac_bits"]:
            return self._frac_refusal(op, u)
        return self._row_refusal(op, program, u, seq_len)

    def trace(self, op, ins, outs, rng):
        rows, mask, pick = self._traced_rows(op, ins, rng)
        _agree(op, outs[0].reshape(rows.shape)[pick],
               intops.softmax_tulq(rows[pick], mask[pick], frac_bits=op.attrs["frac_bits"], **self._levels(op)))
        return dict(t=rows[pick], mask=mask[pick], tulq=self._levels(op))


@register
class Gelu(OpKind):
    kind = "gelu"
    lowering = "gelu"
    attrs = ("in_bits", "out_bits")
    params = ("table",)
    unit = "gelu"
    fuses_after = "requant"
    bench = "gelu"
    report_class = "gelu"

    def check(self, c, ins):
        in_bits = c.attr("in_bits", 2, widths.MAX_GELU_IN_BITS)
        out_bits = c.attr("out_bits", 2, widths.GELU_OUT_BITS)
        t = c.param("table", 1, *_range(out_bits), f"int{out_bits} range")
        if t.shape[0] != 1 << in_bits:
            c.fail("table", f"has {t.shape[0]} entries, a {in_bits}-bit input needs {1 << in_bits}")
        x = ins[0]
        c.within(x, *_range(in_bits), f"a GELU table indexed by a signed {in_bits}-bit value", "in_bits")
        return [Value("", x.shape, int(t.min()), int(t.max()))]

    def run(self, op, args, ctx):
        return [intops.gelu(args[0], op.params["table"], op.attrs["in_bits"])]

    def cost(self, m, c, i, op, fused):
        n = m.plan.numel(op.inputs[0])
        m.stream(c, i, op, m.a.gelu, n, fused)
        c.count("gelu", n)

    def param_bytes(self, op, plan):
        return {"table": ceil_div(op.params["table"].size * op.attrs["out_bits"], 8)}

    def refusal(self, op, program, accel, seq_len=None):
        u = accel.unit_params("gelu")
        in_bits, out_bits = op.attrs["in_bits"], op.attrs["out_bits"]
        if in_bits > u["in_bits"]:
            return "in_bits", (f"a {in_bits}-bit GELU table ({1 << in_bits} entries) does not fit the GELU unit's "
                               f"{u['in_bits']}-bit ROM address ({1 << u['in_bits']} entries; accepted: "
                               f"in_bits <= {u['in_bits']})")
        if out_bits > u["out_bits"]:
            return "out_bits", (f"int{out_bits} GELU table entries are wider than the GELU unit's int{u['out_bits']} "
                                f"entries (accepted: out_bits <= {u['out_bits']}); use an accelerator with "
                                f"units.gelu.out_bits >= {out_bits}")
        return None

    def trace(self, op, ins, outs, rng):
        pick = _sample_elems(ins[0], TRACE_ELEMS, rng)
        x = ins[0].ravel()[pick]
        _agree(op, outs[0].ravel()[pick], intops.gelu(x, op.params["table"], op.attrs["in_bits"]))
        return dict(x=x, table=op.params["table"])


@register
class LayerNorm(OpKind):
    kind = "layernorm"
    lowering = "layernorm"
    attrs = ("shift", "out_bits", "frac_bits")
    params = ("gamma", "beta")
    optional_params = ("in_shift",)
    unit = "layernorm"
    bench = "layernorm"
    report_class = "layernorm"

    def check(self, c, ins):
        c.attr("shift", 0, widths.MAX_SHIFT)
        out_bits = c.attr("out_bits", 2, widths.MAX_TENSOR_BITS)
        c.attr("frac_bits", 1, 14)
        g = c.param("gamma", 1, *_range(widths.LN_GAMMA_BITS), f"int{widths.LN_GAMMA_BITS} range")
        b = c.param("beta", 1, *_range(widths.LN_BETA_BITS), f"int{widths.LN_BETA_BITS} range")
        x = ins[0]
        c.rank(x, 1)
        c.within(x, *_range(widths.LN_IN_BITS), f"the LayerNorm unit (int{widths.LN_IN_BITS})")
        if not same(x.shape[-1], g.shape[0]):
            c.fail("gamma", f"{g.shape[0]} channels, input {x.name!r} has shape {x.shape}")
        if b.shape != g.shape:
            c.fail("beta", f"shape {b.shape} differs from gamma's {g.shape}")
        if "in_shift" in c.op.params:
            sh = c.param("in_shift", 1, 0, widths.LN_MAX_IN_SHIFT, "power-of-two factors")
            if sh.shape != g.shape:
                c.fail("in_shift", f"shape {sh.shape} differs from gamma's {g.shape}")
            c.within(x, *_range(widths.LN_SHIFTED_IN_BITS),
                     f"a LayerNorm with power-of-two factors (int{widths.LN_SHIFTED_IN_BITS})")
        return [Value("", x.shape, *_range(out_bits))]

    def run(self, op, args, ctx):
        a, p = op.attrs, op.params
        return [intops.layernorm(args[0], p["gamma"], p["beta"], a["shift"], a["out_bits"], a["frac_bits"],
                                 in_shift=p.get("in_shift"))]

    def cost(self, m, c, i, op, fused):
        m.rows_unit(c, i, op, m.a.layernorm, timing.layernorm_row_cycles, "layernorm")

    def refusal(self, op, program, accel, seq_len=None):
        u = accel.unit_params("layernorm")
        fb, out_bits, n = op.attrs["frac_bits"], op.attrs["out_bits"], op.params["gamma"].shape[0]
        if fb != u["frac_bits"]:
            return "frac_bits", (f"a normalized value with {fb} fractional bits; the LayerNorm unit fixes "
                                 f"{u['frac_bits']} (accepted: frac_bits = {u['frac_bits']})")
        if out_bits > u["out_bits"]:
            return "out_bits", (f"{out_bits}-bit outputs are wider than the LayerNorm unit's {u['out_bits']}-bit "
                                f"output (accepted: out_bits <= {u['out_bits']})")
        if n > u["max_n"]:
            return "gamma", (f"rows of {n} channels do not fit the LayerNorm unit's {u['max_n']}-channel row "
                             f"buffer (accepted: <= {u['max_n']} channels)")
        return None

    def param_bytes(self, op, plan):  # int16 gamma, int32 beta, 2-bit power-of-two input factors if any
        n = op.params["gamma"].size
        return {"gamma": ceil_div(n * widths.LN_GAMMA_BITS, 8), "beta": ceil_div(n * widths.LN_BETA_BITS, 8),
                "in_shift": ceil_div(2 * n, 8) if "in_shift" in op.params else 0}

    def trace(self, op, ins, outs, rng):
        a, p = op.attrs, op.params
        rows = ins[0].reshape(-1, ins[0].shape[-1])
        pick = _sample_rows(ins[0], TRACE_ROWS, rng)
        _agree(op, outs[0].reshape(rows.shape)[pick],
               intops.layernorm(rows[pick], p["gamma"], p["beta"], a["shift"], a["out_bits"], a["frac_bits"],
                                in_shift=p.get("in_shift")))
        return dict(x=rows[pick], gamma=p["gamma"], beta=p["beta"], shift=a["shift"], in_shift=p.get("in_shift"),
                    out_width=a["out_bits"])


# ==================================================================== embeddings (DRAM lookups)
@register
class Embedding(OpKind):
    kind = "embedding"
    not_compiled = "embedding lookups are not compiled yet (a DRAM gather the ISA has no instruction for)"
    attrs = ("out_bits",)
    params = ("table",)
    unit = "dram"

    def check(self, c, ins):
        out_bits = c.attr("out_bits", 2, widths.RESIDUAL_BITS)
        t = c.param("table", 2, *_range(out_bits), f"int{out_bits} range")
        ids = ins[0]  # checked against the table as the program runs: token ids are program inputs
        return [Value("", ids.shape + (t.shape[1],), int(t.min()), int(t.max()))]

    def run(self, op, args, ctx):
        ids, table = args[0], op.params["table"]
        _check_ids(op, ids, table.shape[0])
        return [intops.embedding(ids, table)]

    def cost(self, m, c, i, op, fused):  # a lookup in DRAM: no unit busy
        m.read_inputs(c, i, op)
        m.params(c, op)
        m.write_output(c, op.outputs[0])

    def param_bytes(self, op, plan):  # only the looked-up rows
        return {"table": plan.nbytes(op.outputs[0])}


def _check_ids(op: Op, ids: np.ndarray, rows: int) -> None:
    """Token ids are program inputs: checked against the table as the program runs."""
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= rows):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ProgramError(f"op {op.name!r} ({op.kind}): field 'inputs': id {bad} outside the table's "
                           f"rows [0, {rows - 1}]")


@register
class BinaryEmbedding(Embedding):
    """A binarized embedding table: one sign bit an entry and one magnitude a row (``scale``, on the output's
    grid), ``sim.intops.binary_embedding``; a DRAM lookup of the row's bits and magnitude."""

    kind = "binary_embedding"
    params = ("bits", "scale")

    def check(self, c, ins):
        out_bits = c.attr("out_bits", 2, widths.RESIDUAL_BITS)
        bits = c.param("bits", 2, 0, 1, "sign bits")
        scale = c.param("scale", 1, 0, _range(out_bits)[1], f"magnitudes of an int{out_bits} output")
        if scale.shape[0] != bits.shape[0]:
            c.fail("scale", f"has {scale.shape[0]} entries for {bits.shape[0]} rows")
        top = int(scale.max())
        return [Value("", ins[0].shape + (bits.shape[1],), -top, top)]

    def run(self, op, args, ctx):
        _check_ids(op, args[0], op.params["bits"].shape[0])
        return [intops.binary_embedding(args[0], op.params["bits"], op.params["scale"])]

    def param_bytes(self, op, plan):  # only the looked-up rows: their bits and their magnitudes
        width = op.params["bits"].shape[1]
        rows = plan.numel(op.outputs[0]) // width
        bits = plan.p.tensors[op.outputs[0]].bits
        return {"bits": ceil_div(rows * width, 8), "scale": ceil_div(rows * bits, 8)}


# ==================================================================== row gathers (window attention's data movement)
@register
class GatherRows(OpKind):
    """Rows of the input (all dimensions but the last, flattened) picked by an index table: out row ``p``
    is the concatenation of input rows ``index[p, 0..k-1]``, the ``fill`` row where an entry is -1.
    Swin's window partition (with its cyclic shift and padding), the reverse, and 2x2 patch merging."""

    kind = "gather_rows"
    not_compiled = ("row gathers (window partition, cyclic shift, patch merging) are not compiled yet (no "
                    "instruction of the ISA gathers rows)")
    params = ("index",)
    optional_params = ("fill",)
    report_class = "other"

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 2)
        if None in x.shape:
            c.fail("inputs", f"gathers rows of a fixed shape, {x.name!r} has {x.shape}")
        rows, width = int(np.prod(x.shape[:-1])), x.shape[-1]
        index = c.param("index", None, -1, rows - 1, f"the {rows} rows of {x.name!r}, or -1 for the fill row")
        if index.ndim < 2:
            c.fail("index", f"needs at least 2 dimensions (output rows, rows each concatenates), got {index.shape}")
        if "fill" in c.op.params:
            fill = c.param("fill", 1, x.lo, x.hi, f"the range of {x.name!r}")
            if fill.shape[0] != width:
                c.fail("fill", f"has {fill.shape[0]} entries for rows of {width}")
        elif int(index.min()) < 0:
            c.fail("fill", "missing parameter: index entries of -1 pick the fill row")
        return [_out(x, index.shape[:-1] + (index.shape[-1] * width,))]

    def run(self, op, args, ctx):
        x, index = args[0], op.params["index"]
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        out = intops.gather_rows(rows, index, op.params.get("fill"))
        return [out.reshape(x.shape[:1] + index.shape[:-1] + (-1,))]

    def cost(self, m, c, i, op, fused):  # a copy through the activation buffer by an address table; no unit computes
        m.read_inputs(c, i, op)
        m.params(c, op)
        m.write_output(c, op.outputs[0])

    def param_bytes(self, op, plan):  # index entries as wide as the row count needs, a fill row of the input's width
        index = op.params["index"]
        out = {"index": ceil_div(index.size * signed_bits(-1, int(index.max())), 8)}
        if "fill" in op.params:
            out["fill"] = ceil_div(op.params["fill"].size * plan.p.tensors[op.inputs[0]].bits, 8)
        return out


# ==================================================================== views (move nothing)
class _View(OpKind):
    unit = "none"
    role = "view"

    def cost(self, m, c, i, op, fused):
        pass


@register
class Patchify(_View):
    kind = "patchify"
    lowering = "patchify"
    attrs = ("patch",)

    def check(self, c, ins):
        k = c.attr("patch", 1, 64)
        x = ins[0]
        c.rank(x, 3, 3)
        ch, h, w = x.shape
        if None in (ch, h, w):
            c.fail("inputs", f"an image {x.name!r} needs a fixed size, got {x.shape}")
        if h % k or w % k:
            c.fail("patch", f"{k} does not divide the image size {h}x{w}")
        return [_out(x, ((h // k) * (w // k), ch * k * k))]

    def run(self, op, args, ctx):
        x = args[0]
        b, ch, h, w = x.shape
        s = op.attrs["patch"]
        x = x.reshape(b, ch, h // s, s, w // s, s).transpose(0, 2, 4, 1, 3, 5)
        return [x.reshape(b, (h // s) * (w // s), ch * s * s)]


@register
class Split(_View):
    kind = "split"
    lowering = "split"
    attrs = ("sizes",)

    def check(self, c, ins):
        sizes = c.int_list("sizes")
        x = ins[0]
        c.rank(x, 1)
        if not same(x.shape[-1], sum(sizes)):
            c.fail("sizes", f"sum {sum(sizes)} differs from the last dimension of {x.name!r} {x.shape}")
        return [_out(x, x.shape[:-1] + (s,)) for s in sizes]

    def run(self, op, args, ctx):
        return list(np.split(args[0], np.cumsum(op.attrs["sizes"])[:-1], axis=-1))


@register
class SplitHeads(_View):
    kind = "split_heads"
    lowering = "split_heads"
    attrs = ("heads",)

    def check(self, c, ins):
        h = c.attr("heads", 1, 256)
        x = ins[0]
        c.rank(x, 2)
        *lead, t, d = x.shape
        if d is None or d % h:
            c.fail("heads", f"{h} heads do not divide width {d} of {x.name!r}")
        return [_out(x, tuple(lead) + (h, t, d // h))]

    def run(self, op, args, ctx):
        x = args[0]
        h = op.attrs["heads"]
        return [np.moveaxis(x.reshape(x.shape[:-1] + (h, x.shape[-1] // h)), -2, -3)]


@register
class MergeHeads(_View):
    kind = "merge_heads"
    lowering = "merge_heads"
    widening = True

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 3)
        *lead, h, t, d = x.shape
        if h is None or d is None:
            c.fail("inputs", f"heads and head width of {x.name!r} must be fixed, got {x.shape}")
        return [_out(x, tuple(lead) + (t, h * d))]

    def run(self, op, args, ctx):
        x = np.moveaxis(args[0], -3, -2)
        return [x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))]


@register
class ChannelsLast(_View):
    """An image [C, H, W] as the convolutions read it, [H, W, C]: the input load writes it channel-interleaved."""

    kind = "channels_last"
    not_compiled = "channel-interleaved image loads are not compiled yet"

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 3, 3)
        ch, h, w = x.shape
        return [_out(x, (h, w, ch))]

    def run(self, op, args, ctx):
        return [np.moveaxis(args[0], -3, -1)]


@register
class FlattenRows(_View):
    """A feature map [H, W, C] as H*W rows of C channels (what global pooling reads): the same memory."""

    kind = "flatten_rows"
    not_compiled = "feature-map views are not compiled yet"

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 3, 3)
        h, w, ch = x.shape
        if h is None or w is None:
            c.fail("inputs", f"a feature map {x.name!r} needs a fixed size, got {x.shape}")
        return [_out(x, (h * w, ch))]

    def run(self, op, args, ctx):
        x = args[0]
        return [x.reshape(x.shape[:-3] + (x.shape[-3] * x.shape[-2], x.shape[-1]))]


@register
class ConcatToken(_View):
    kind = "concat_token"
    lowering = "concat_token"
    widening = True
    params = ("token",)

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 2)
        tok = c.param("token", 1, x.lo, x.hi, f"the range of {x.name!r}")
        if not same(x.shape[-1], tok.shape[0]):
            c.fail("token", f"width {tok.shape[0]} differs from {x.name!r} {x.shape}")
        t = x.shape[-2]
        return [_out(x, x.shape[:-2] + (None if t is None else t + 1, x.shape[-1]))]

    def run(self, op, args, ctx):
        x = args[0]
        tok = np.broadcast_to(op.params["token"].astype(x.dtype), x.shape[:-2] + (1, x.shape[-1]))
        return [np.concatenate([tok, x], axis=-2)]

    def cost(self, m, c, i, op, fused):  # writes the class token's row in front of the patch rows
        m.params(c, op)
        c.count("sram_activation_write", m.plan.batch * self.param_bytes(op, m.plan)["token"])

    def param_bytes(self, op, plan):
        return {"token": ceil_div(op.params["token"].size * plan.p.tensors[op.inputs[0]].bits, 8)}


@register
class SelectToken(_View):
    kind = "select_token"
    lowering = "select_token"
    attrs = ("index",)

    def check(self, c, ins):
        x = ins[0]
        c.rank(x, 2)
        t = x.shape[-2]
        c.attr("index", 0, None if t is None else t - 1)
        return [_out(x, x.shape[:-2] + (x.shape[-1],))]

    def run(self, op, args, ctx):
        x, index = args[0], op.attrs["index"]
        if index >= x.shape[-2]:
            raise ProgramError(f"op {op.name!r} (select_token): field 'index': {index} outside the "
                               f"{x.shape[-2]} tokens of the input")
        return [x[..., index, :]]
