"""CNNs as integer programs: a timm EfficientNet / MobileNetV2 / ResNet as one neutral graph with its
BatchNorms folded, calibrated, and lowered onto the accelerator's ops.

The graph is a list of :class:`Node` steps over named feature maps. Each step's
output is a quantization point: a convolution's output after its activation
(ReLU and ReLU6 become the requantizer's clamp: an unsigned grid whose top is
at or below 6), a residual sum, a max pool. The float forward calls a hook at
every point (identity for FP32, an observer for calibration, a fake quantizer
for the paper protocol) and the lowering walks the same steps, so the two
cannot disagree on the graph.

Integer form, per step:

* the image: int8 with a zero point, laid out channels last by its load;
* convolution: ``conv2d`` on the array, padded with the input's zero point, so
  the zero-point correction folded into the bias is exact at the borders; its
  int32 result requantized per output channel onto the point's grid;
* residual add: the vector adder brings both operands onto the sum's grid
  (a ReLU after it is one more requant onto an unsigned grid);
* global average pooling: ``mean_pool`` over the H*W rows, keeping fractional bits;
  the classifier: a ``linear``, its per-class accumulators requantized onto one int16 grid (the output).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from quant.observers import Observer
from quant.quantizers import (QParams, QuantError, dyadic, fake_weight, qparams_from_range, quantize_weight,
                              weight_scales)
from sim import intops, widths
from sim.program import IntegerProgram, Op, TensorSpec, validate

ACTS = ("none", "relu", "relu6")
#: the methods that quantize CNNs (the transformer methods' rewrites do not apply to a convolution graph);
#: quant.actcomp registers the activation-compression ones in :data:`METHODS`
CNN_METHODS = ("baseline", "actcomp-mpdr", "actcomp-cap")
INPUT_BITS = 8  #: the image, asymmetric
LOGIT_BITS = 16  #: the logits, one symmetric grid for every class (the classifier's accumulators are per class)


@dataclass(frozen=True)
class PackedGrid(QParams):
    """A point stored group-wise (``quant.actcomp``): channel c on the grid ``scale * 2**chan_shift[c]`` with
    ``chan_bits[c]`` bits (0: dropped, read as 0), zero point 0. Its integers are on the tensor's grid
    ``scale`` (``bits`` wide) after the requantizer's packing shift (``sim.intops.pack_channels``)."""

    chan_bits: tuple[int, ...] = ()
    chan_shift: tuple[int, ...] = ()

    def steps(self) -> np.ndarray:
        return self.scale * np.exp2(np.asarray(self.chan_shift, dtype=np.float64))

    def channel_range(self) -> tuple[np.ndarray, np.ndarray]:
        bits = np.asarray(self.chan_bits)
        if self.signed:
            half = np.where(bits > 0, np.exp2(np.maximum(bits - 1, 0)), 0.0)
            return -half, np.maximum(half - 1, 0)
        return np.zeros(len(bits)), np.exp2(bits) - 1

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """Channels on axis 1 (a feature map [B, C, H, W] as the forward holds it)."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        step = torch.as_tensor(self.steps(), dtype=x.dtype).view(shape)
        lo, hi = (torch.as_tensor(v, dtype=x.dtype).view(shape) for v in self.channel_range())
        return torch.minimum(torch.maximum(torch.round(x / step), lo), hi) * step


@dataclass
class Conv:
    w: torch.Tensor  #: [O, C/groups, kh, kw], the BatchNorm folded in
    b: torch.Tensor  #: [O]
    stride: int
    padding: tuple[int, int, int, int]  #: top, bottom, left, right
    groups: int = 1
    act: str = "none"
    project: bool = False  #: a channel projection the array runs on its producer's drain (quant.actcomp)


@dataclass
class Node:
    """One step: ``step`` is conv, add, maxpool, pool (global average) or fc (the classifier, logits out)."""

    name: str
    step: str
    inputs: tuple[str, ...]
    conv: Conv | None = None
    act: str = "none"  #: add: the activation applied to the sum
    fc: tuple[torch.Tensor, torch.Tensor] | None = None  #: classifier weight [N, C] and bias [N]
    window: tuple[int, int, tuple[int, int, int, int]] | None = None  #: maxpool kernel, stride, padding


@dataclass
class CNN:
    name: str
    in_chans: int
    img_size: int
    nodes: list[Node]
    family: str = "cnn"

    def copy(self) -> "CNN":
        return copy.deepcopy(self)

    def convs(self) -> dict[str, Conv]:
        return {n.name: n.conv for n in self.nodes if n.step == "conv"}

    def points(self) -> list[str]:
        """Every quantization point: the image, each step's output but the pooling, the logits."""
        return ["input"] + [n.name for n in self.nodes if n.step in ("conv", "add", "maxpool", "fc")]


# ------------------------------------------------------------------ from timm
def _same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's 'SAME': output ceil(size / s), the odd pixel of padding at the end."""
    pad = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return pad // 2, pad - pad // 2


def _act_of(module) -> str:
    if module is None or isinstance(module, torch.nn.Identity):
        return "none"
    if isinstance(module, torch.nn.ReLU6):
        return "relu6"
    if isinstance(module, torch.nn.ReLU):
        return "relu"
    raise QuantError(f"activation {type(module).__name__} has no integer form here (accepted: ReLU, ReLU6)")


class _Walker:
    """Builds the graph of a timm model, following the feature map's size to resolve 'SAME' padding."""

    def __init__(self, size: int):
        self.nodes: list[Node] = []
        self.size = size

    def conv(self, name: str, src: str, conv: torch.nn.Conv2d, bn, act: str) -> str:
        if conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise QuantError(f"{name}: only square kernels and strides without dilation are lowered, got "
                             f"kernel {conv.kernel_size}, stride {conv.stride}, dilation {conv.dilation}")
        k, s = conv.kernel_size[0], conv.stride[0]
        if type(conv).__name__ == "Conv2dSame":
            top, bottom = _same_padding(self.size, k, s)
            padding = (top, bottom, top, bottom)
        else:
            if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1]:
                raise QuantError(f"{name}: padding {conv.padding} is not lowered")
            p = conv.padding[0]
            padding = (p, p, p, p)
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if bn is not None:  # y = g (conv - mean) / sqrt(var + eps) + beta
            g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = w * g[:, None, None, None]
            b = (b - bn.running_mean.double()) * g + bn.bias.detach().double()
        self.size = intops.conv_out_size(self.size, k, s, padding[0], padding[1])
        self.nodes.append(Node(name, "conv", (src,), Conv(w.float(), b.float(), s, padding, conv.groups, act)))
        return name

    def bn_conv(self, name: str, src: str, conv, bn) -> str:
        """A convolution and timm's BatchNormAct2d, whose activation rides on the norm."""
        return self.conv(name, src, conv, bn, _act_of(getattr(bn, "act", None)))

    def add(self, name: str, a: str, b: str, act: str = "none") -> str:
        self.nodes.append(Node(name, "add", (a, b), act=act))
        return name


def from_timm(model: torch.nn.Module, name: str, img_size: int) -> CNN:
    """The graph of a timm EfficientNet-family model (EfficientNet-Lite, MobileNetV2: depthwise-separable
    and inverted-residual blocks without squeeze-excite) or a ResNet of basic blocks, in eval mode."""
    arch = type(model).__name__
    walk = _Walker(img_size)
    if arch == "EfficientNet":
        x = walk.bn_conv("stem", "input", model.conv_stem, model.bn1)
        for si, stage in enumerate(model.blocks):
            for bi, blk in enumerate(stage):
                pre = f"blocks.{si}.{bi}."
                if not isinstance(getattr(blk, "se", None), (torch.nn.Identity, type(None))):
                    raise QuantError(f"{pre}se: squeeze-excite blocks are not lowered (EfficientNet-Lite has none)")
                block_in = x
                block_type = type(blk).__name__
                if block_type == "DepthwiseSeparableConv":
                    x = walk.bn_conv(pre + "dw", x, blk.conv_dw, blk.bn1)
                    x = walk.bn_conv(pre + "pw", x, blk.conv_pw, blk.bn2)
                elif block_type == "InvertedResidual":
                    x = walk.bn_conv(pre + "pw", x, blk.conv_pw, blk.bn1)
                    x = walk.bn_conv(pre + "dw", x, blk.conv_dw, blk.bn2)
                    x = walk.bn_conv(pre + "pwl", x, blk.conv_pwl, blk.bn3)
                else:
                    raise QuantError(f"{pre.rstrip('.')}: block {block_type} is not lowered")
                if blk.has_skip:
                    x = walk.add(pre + "res", block_in, x)
        x = walk.bn_conv("head", x, model.conv_head, model.bn2)
        classifier = model.classifier
    elif arch == "ResNet":
        x = walk.conv("stem", "input", model.conv1, model.bn1, _act_of(model.act1))
        if not isinstance(model.maxpool, torch.nn.Identity):
            mp = model.maxpool
            k, s, p = (v if isinstance(v, int) else v[0] for v in (mp.kernel_size, mp.stride, mp.padding))
            walk.nodes.append(Node("stem_pool", "maxpool", (x,), window=(k, s, (p, p, p, p))))
            walk.size = intops.conv_out_size(walk.size, k, s, p, p)
            x = "stem_pool"
        for li in range(1, 5):
            for bi, blk in enumerate(getattr(model, f"layer{li}", ())):
                if type(blk).__name__ != "BasicBlock":
                    raise QuantError(f"layer{li}.{bi}: block {type(blk).__name__} is not lowered (basic blocks only)")
                pre = f"layer{li}.{bi}."
                size = walk.size
                h = walk.conv(pre + "conv1", x, blk.conv1, blk.bn1, _act_of(blk.act1))
                h = walk.conv(pre + "conv2", h, blk.conv2, blk.bn2, "none")
                skip = x
                if blk.downsample is not None:
                    after = walk.size
                    walk.size = size
                    skip = walk.conv(pre + "down", x, blk.downsample[0], blk.downsample[1], "none")
                    walk.size = after
                x = walk.add(pre + "res", skip, h, _act_of(blk.act2))
        classifier = model.fc
    else:
        raise QuantError(f"{name}: a {arch} is not lowered (accepted: timm EfficientNet, MobileNetV2, ResNet)")
    walk.nodes.append(Node("pool", "pool", (x,)))
    walk.nodes.append(Node("logits", "fc", ("pool",),
                           fc=(classifier.weight.detach().float(), classifier.bias.detach().float())))
    in_chans = walk.nodes[0].conv.w.shape[1]
    return CNN(name, in_chans, img_size, walk.nodes)


# ------------------------------------------------------------------ the float forward
Hook = Callable[[str, torch.Tensor], torch.Tensor]


def _activate(y: torch.Tensor, act: str) -> torch.Tensor:
    return F.relu6(y) if act == "relu6" else F.relu(y) if act == "relu" else y


def conv_forward(c: Conv, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    top, bottom, left, right = c.padding
    y = F.conv2d(F.pad(x, (left, right, top, bottom)), c.w if w is None else w, c.b, c.stride, 0, 1, c.groups)
    return _activate(y, c.act)


def forward(cnn: CNN, x: torch.Tensor, hook: Hook | None = None, weight: Callable | None = None) -> torch.Tensor:
    """Logits of images ``x`` [B, C, H, W]; ``hook(point, tensor)`` may replace the tensor at every point,
    ``weight(name, conv)`` the weights a convolution or the classifier uses."""
    hook = hook or (lambda name, t: t)
    vals = run_nodes(cnn.nodes, {"input": hook("input", x)}, hook, weight)
    if cnn.nodes[-1].step != "fc":
        raise QuantError(f"{cnn.name}: the graph ends without a classifier")
    return vals[cnn.nodes[-1].name]


def run_nodes(nodes: list[Node], vals: dict[str, torch.Tensor], hook: Hook, weight: Callable | None = None
              ) -> dict[str, torch.Tensor]:
    """``vals`` (the feature maps the steps read) with the outputs of ``nodes`` added, each through ``hook``
    but the global mean pool (its input's grid carries it)."""
    vals = dict(vals)
    for n in nodes:
        ins = [vals[i] for i in n.inputs]
        if n.step == "conv":
            y = conv_forward(n.conv, ins[0], weight(n.name, n.conv.w) if weight else None)
        elif n.step == "add":
            y = _activate(ins[0] + ins[1], n.act)
        elif n.step == "maxpool":
            k, s, (top, bottom, left, right) = n.window
            y = F.max_pool2d(F.pad(ins[0], (left, right, top, bottom), value=float("-inf")), k, s)
        elif n.step == "pool":
            vals[n.name] = ins[0].mean(dim=(-2, -1))
            continue
        else:
            w, b = n.fc
            y = F.linear(ins[0], weight(n.name, w) if weight else w, b)
        vals[n.name] = hook(n.name, y)
    return vals


# ------------------------------------------------------------------ calibration
@dataclass
class CnnPlan:
    """What a method decides for a CNN: a grid at every point and per-channel weight scales."""

    spec: CNN
    method: str
    wbits: int
    abits: int
    acts: dict[str, QParams]
    weight_scales: dict[str, torch.Tensor]  #: per output channel, by step name (the classifier: "logits")
    meta: dict = field(default_factory=dict)

    def weights(self) -> dict[str, torch.Tensor]:
        out = {name: c.w for name, c in self.spec.convs().items()}
        out["logits"] = self.spec.nodes[-1].fc[0]
        return out


def _unsigned(cnn: CNN) -> set[str]:
    """Points that a ReLU or ReLU6 leaves non-negative (a max pool keeps its input's sign)."""
    out = set()
    for n in cnn.nodes:
        if (n.step == "conv" and n.conv.act != "none") or (n.step == "add" and n.act != "none") or (
                n.step == "maxpool" and n.inputs[0] in out):
            out.add(n.name)
    return out


def collect(cnn: CNN, batches: Iterable, progress: bool = True, also: Hook | None = None) -> dict[str, Observer]:
    """Observers at every point over the calibration images (``also(point, tensor)`` sees each point too)."""
    observers = {p: Observer(seed=i) for i, p in enumerate(cnn.points())}

    def hook(name, t):
        observers[name].update(t.movedim(1, -1))  # channels last, as the program holds them
        if also is not None:
            also(name, t)
        return t

    with torch.no_grad():
        for images, _ in tqdm(list(batches), desc=f"calibrate {cnn.name}", disable=not progress, leave=False):
            forward(cnn, images, hook)
    return observers


def baseline(cnn: CNN, batches: Iterable, wbits: int, abits: int, *, progress: bool = True) -> CnnPlan:
    """Per-channel min/max weights; per-tensor min/max activations: the image asymmetric int8, a ReLU's
    output on an unsigned grid from 0 to its maximum (ReLU6's top is at most 6), a signed one symmetric."""
    return grids(cnn, collect(cnn, batches, progress), wbits, abits)


def act_grid(lo: float, hi: float, bits: int, unsigned: bool) -> QParams:
    """A point's grid over its range ``[lo, hi]``: from 0 to ``hi`` after a ReLU (``unsigned``), else symmetric."""
    if unsigned:
        return QParams(max(hi, 1e-8) / ((1 << bits) - 1), 0, bits, signed=False)
    return qparams_from_range(lo, hi, bits, symmetric=True)


def grids(cnn: CNN, observers: dict[str, Observer], wbits: int, abits: int, method: str = "baseline") -> CnnPlan:
    """The baseline's grids from the observers of every point (what :func:`baseline` calibrates)."""
    unsigned = _unsigned(cnn)
    acts = {}
    for name, obs in observers.items():
        if name == "input":
            acts[name] = qparams_from_range(obs.min, obs.max, INPUT_BITS, symmetric=False)
        elif name == "logits":  # one grid for every class, so that the program's output ranks them
            acts[name] = qparams_from_range(obs.min, obs.max, LOGIT_BITS, symmetric=True)
        else:
            acts[name] = act_grid(obs.min, obs.max, abits, name in unsigned)
    for n in cnn.nodes:  # a max keeps its input's grid
        if n.step == "maxpool":
            acts[n.name] = acts[n.inputs[0]]
    plan = CnnPlan(cnn, method, wbits, abits, acts, {})
    plan.weight_scales = {name: weight_scales(w.reshape(w.shape[0], -1), wbits) for name, w in plan.weights().items()}
    return plan


METHODS = {"baseline": baseline}


#: a bias takes at most this many bits of the int32 accumulator, the rest is left to the products
BIAS_BITS = 29


def calibrate(cnn: CNN, method: str, batches: Iterable, wbits: int, abits: int, *, progress: bool = True,
              **options) -> CnnPlan:
    """``method``'s plan for ``cnn``; ``options``: the method's own keywords (e.g. actcomp's ``ratio``)."""
    if method not in METHODS:
        raise QuantError(f"method {method!r} does not quantize CNNs (CNN methods: {', '.join(METHODS)})")
    plan = METHODS[method](cnn, batches, wbits, abits, progress=progress, **options)
    _bias_room(plan)
    return plan


def _bias_room(plan: CnnPlan) -> None:
    """Raise a weight scale where the bias would not fit :data:`BIAS_BITS` on the accumulator's grid
    ``s_x * s_w``: a channel whose weights BatchNorm folded to almost nothing (a dead channel) keeps its bias
    exact and its weights round to zero, on both protocols alike."""
    for n in plan.spec.nodes:
        b = n.conv.b if n.step == "conv" else n.fc[1] if n.step == "fc" else None
        if b is None:
            continue
        src = n.inputs[0] if n.step == "conv" else plan.spec.nodes[-2].inputs[0]  # the classifier reads the pool
        floor = b.abs().double() / (plan.acts[src].scale * 2.0 ** BIAS_BITS)
        plan.weight_scales[n.name] = torch.maximum(plan.weight_scales[n.name].double(), floor).float()


def paper_forward(plan: CnnPlan) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fake-quant forward: weights and every point on their grids, the arithmetic in float."""
    fakes = {name: fake_weight(w.reshape(w.shape[0], -1), plan.weight_scales[name], plan.wbits).reshape(w.shape)
             for name, w in plan.weights().items()}

    def hook(name, t):
        return plan.acts[name].fake(t)

    return lambda x: forward(plan.spec, x, hook, lambda name, w: fakes[name])


# ------------------------------------------------------------------ lowering
class _Builder:
    def __init__(self, plan: CnnPlan):
        self.plan = plan
        self.tensors: dict[str, TensorSpec] = {}
        self.ops: list[Op] = []
        self.grid: dict[str, QParams] = {}  # tensor -> the grid its integers are on

    def tensor(self, name: str, shape: tuple, qp: QParams | None = None, bits: int | None = None,
               signed: bool = True) -> str:
        if qp is not None:
            self.grid[name] = qp
            bits, signed = qp.bits, qp.signed
        self.tensors[name] = TensorSpec(name, bits, signed, tuple(shape), qp.scale if qp else None,
                                        qp.zero_point if qp else 0)
        return name

    def op(self, kind: str, name: str, inputs: list[str], outputs: list[str], attrs: dict | None = None,
           params: dict | None = None) -> None:
        self.ops.append(Op(kind, name, inputs, outputs, attrs or {}, params or {}))

    def requant(self, name: str, acc: str, in_scale, out: QParams, out_name: str) -> str:
        """Onto ``out``'s grid; a :class:`PackedGrid` rounds each channel onto its own grid and packs it."""
        packed = isinstance(out, PackedGrid)
        m, shift = dyadic(np.atleast_1d(np.asarray(in_scale, dtype=np.float64)) / (out.steps() if packed else out.scale))
        y = self.tensor(out_name, self.tensors[acc].shape, out)
        params = {"m": m.astype(np.int32), "shift": shift.astype(np.int32)}
        if packed:
            params["pack_bits"] = np.asarray(out.chan_bits, dtype=np.int32)
            params["pack_shift"] = np.asarray(out.chan_shift, dtype=np.int32)
        self.op("requant", name, [acc], [y],
                {"out_bits": out.bits, "signed": out.signed, "zero_point": out.zero_point, "pow2": False}, params)
        return y

    def conv(self, node: Node, x: str) -> str:
        plan, c = self.plan, node.conv
        x_qp = self.grid[x]
        s_w = plan.weight_scales[node.name].double().numpy()
        o = c.w.shape[0]
        wq = quantize_weight(c.w.reshape(o, -1), plan.weight_scales[node.name], plan.wbits)
        wq = wq.reshape(c.w.shape).transpose(0, 2, 3, 1)  # [O, kh, kw, C/groups]: the patch order
        s_acc = x_qp.scale * s_w
        bias = np.round(c.b.double().numpy() / s_acc).astype(np.int64) - x_qp.zero_point * wq.reshape(o, -1).sum(1)
        h, w, _ = self.tensors[x].shape
        k = c.w.shape[-1]
        top, bottom, left, right = c.padding
        shape = (intops.conv_out_size(h, k, c.stride, top, bottom), intops.conv_out_size(w, k, c.stride, left, right), o)
        acc = self.tensor(node.name + ".acc", shape, bits=widths.ACC_BITS)
        self.op("project" if c.project else "conv2d", node.name, [x], [acc],
                {"wbits": plan.wbits, "abits": x_qp.bits, "stride": [c.stride, c.stride], "padding": list(c.padding),
                 "groups": c.groups, "pad_value": x_qp.zero_point},
                {"weight": wq.astype(np.int8), "bias": np.clip(bias, *intops.int_range(32)).astype(np.int32)})
        return self.requant(node.name + ".requant", acc, s_acc, plan.acts[node.name], node.name)

    def add(self, node: Node, a: str, b: str) -> str:
        out = self.plan.acts[node.name]
        # the sum on a signed grid one bit wider, so that a ReLU after it is a clamp of an exact sum
        wide = QParams(out.scale, 0, out.bits + 1) if node.act != "none" else out
        ra, rb = self.grid[a].scale / wide.scale, self.grid[b].scale / wide.scale
        shift = min(widths.MAX_SHIFT, 15 - math.ceil(math.log2(max(ra, rb))))
        if shift < 0:
            raise QuantError(f"{node.name}: residual scales differ by more than 2**15")
        ma, mb = (int(round(r * 2 ** shift)) for r in (ra, rb))
        name = node.name + ".sum" if node.act != "none" else node.name
        y = self.tensor(name, self.tensors[a].shape, wide)
        self.op("add", name, [a, b], [y], {"ma": ma, "mb": mb, "shift": shift, "out_bits": wide.bits})
        if node.act == "none":
            return y
        return self.requant(node.name + ".relu", y, wide.scale, out, node.name)


def _fc_integers(plan: CnnPlan, x_qp: QParams) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's integer weights and the bias on the grid of its input ``x_qp``."""
    w, b = plan.spec.nodes[-1].fc
    s_w = plan.weight_scales["logits"]
    wq = quantize_weight(w, s_w, plan.wbits)
    s_acc = x_qp.scale * s_w.double().numpy()
    return wq, np.round(b.double().numpy() / s_acc).astype(np.int64) - x_qp.zero_point * wq.sum(axis=1)


def _pool_frac_bits(plan: CnnPlan, qp: QParams) -> int:
    """Fractional bits the global mean keeps: the feature map's own grid would round away most of a mean of
    small activations, so as many as the residual width and the classifier's int32 accumulator allow
    (``K * max|x| * max|w| + max|bias|`` below 2**31)."""
    top = max(abs(qp.qmin), qp.qmax)
    for frac in range(widths.RESIDUAL_BITS - 1 - (qp.bits - (1 if qp.signed else 0)), 0, -1):
        wq, bias = _fc_integers(plan, QParams(qp.scale / 2 ** frac, 0, widths.RESIDUAL_BITS, qp.signed))
        if wq.shape[1] * (top << frac) * int(np.abs(wq).max()) + int(np.abs(bias).max()) < 1 << (widths.ACC_BITS - 1):
            return frac
    return 0


def lower(plan: CnnPlan) -> IntegerProgram:
    """The integer program of a CNN plan."""
    cnn = plan.spec
    b = _Builder(plan)
    in_qp = plan.acts["input"]
    image = b.tensor("input", (cnn.in_chans, cnn.img_size, cnn.img_size), in_qp)
    names = {"input": b.tensor("input.hwc", (cnn.img_size, cnn.img_size, cnn.in_chans), in_qp)}
    b.op("channels_last", "input.hwc", [image], [names["input"]])
    logits = None
    for n in cnn.nodes:
        ins = [names[i] for i in n.inputs]
        if n.step == "conv":
            names[n.name] = b.conv(n, ins[0])
        elif n.step == "add":
            names[n.name] = b.add(n, *ins)
        elif n.step == "maxpool":
            k, s, pad = n.window
            h, w, ch = b.tensors[ins[0]].shape
            shape = (intops.conv_out_size(h, k, s, pad[0], pad[1]), intops.conv_out_size(w, k, s, pad[2], pad[3]), ch)
            names[n.name] = b.tensor(n.name, shape, b.grid[ins[0]])  # a max keeps its input's grid
            b.op("max_pool", n.name, ins, [names[n.name]], {"kernel": k, "stride": s, "padding": list(pad)})
        elif n.step == "pool":
            h, w, ch = b.tensors[ins[0]].shape
            qp = b.grid[ins[0]]
            rows = b.tensor(n.name + ".rows", (h * w, ch), qp)
            b.op("flatten_rows", n.name + ".rows", ins, [rows])
            frac = _pool_frac_bits(plan, qp)
            fine = QParams(qp.scale / 2 ** frac, 0, widths.RESIDUAL_BITS - (0 if qp.signed else 1), qp.signed)
            names[n.name] = b.tensor(n.name, (ch,), fine)
            b.op("mean_pool", n.name, [rows], [names[n.name]], {"frac_bits": frac})
        else:
            x_qp = b.grid[ins[0]]
            wq, bias = _fc_integers(plan, x_qp)
            acc = b.tensor(n.name + ".acc", (wq.shape[0],), bits=widths.ACC_BITS)
            b.op("linear", n.name, ins, [acc], {"wbits": plan.wbits, "abits": x_qp.bits},
                 {"weight": wq.astype(np.int8), "bias": np.clip(bias, *intops.int_range(32)).astype(np.int32)})
            s_acc = x_qp.scale * plan.weight_scales[n.name].double().numpy()
            logits = b.requant(n.name + ".requant", acc, s_acc, plan.acts[n.name], n.name)
    meta = {"method": plan.method, "wbits": plan.wbits, "abits": plan.abits, "family": "cnn", "pow2": False,
            **plan.meta}
    program = IntegerProgram(cnn.name, [b.tensors[image]], [logits], b.tensors, b.ops, meta)
    validate(program)
    return program


from quant import actcomp  # noqa: E402,F401  (registers the activation-compression methods in METHODS)
from quant import cnn_apq  # noqa: E402,F401  (registers apq's blockwise calibration in METHODS)
