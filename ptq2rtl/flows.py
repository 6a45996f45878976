"""End-to-end flows that tie models, quantization and the golden engine together: quantize, and evaluate under either protocol."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import torch
from tqdm import tqdm

from ptq2rtl import models
from quant import cnn, datafree
from quant.cnn import CNN, CnnPlan
from quant.lower import lower
from quant.methods import get_method
from quant.methods.bibert import BinaryPlan
from quant.model import Forward, Transformer, adapt
from quant.plan import QuantPlan, Sites, chosen_points, linears, paper_forward
from quant.quantizers import QuantError, check_bits, program_inputs
from sim import engine
from sim.program import IntegerProgram, ProgramError

CALIB_BATCH = 32
EVAL_BATCH = 64


def load_spec(name: str, checkpoint: str | None = None) -> Transformer | CNN:
    """The neutral structure quantization starts from: a Transformer, or a CNN's graph with BatchNorm folded."""
    info = models.model_info(name)  # an encoder folder's name is its absolute path, which its programs record
    model = models.load_model(name, checkpoint)
    if info.family == "cnn":
        return cnn.from_timm(model, info.name, models.input_spec(name)["image_size"])
    return adapt(model, info.name, info.family)


def check_method(spec: Transformer | CNN, method: str) -> None:
    """Refuse a method that does not quantize ``spec``'s family, naming the ones that do."""
    if isinstance(spec, CNN):
        if method not in cnn.METHODS:
            raise QuantError(f"method {method!r} does not quantize CNNs (CNN methods: {', '.join(cnn.METHODS)})")
    else:
        get_method(method)


CALIB_SOURCES = ("real",) + datafree.GENERATORS


def calibration_batches(name: str, data: str | None = None, calib: str = "real", *, checkpoint: str | None = None,
                        progress: bool = True) -> list:
    """The calibration split, or (``calib`` = zeroq / dsg, a CNN with BatchNorm) images synthesized from the
    FP32 model's BatchNorm statistics (``quant.datafree``, cached), labelled None."""
    if calib == "real":
        return list(models.iter_batches(name, "calib", CALIB_BATCH, data=data))
    if calib not in CALIB_SOURCES:
        raise QuantError(f"unknown calibration source {calib!r} (accepted: {', '.join(CALIB_SOURCES)})")
    if models.model_info(name).family != "cnn":
        raise QuantError(f"--calib {calib} synthesizes images from BatchNorm statistics: CNNs only, not {name!r}")
    spec = models.input_spec(name)
    shape = (spec["in_chans"], spec["image_size"], spec["image_size"])
    # pixels 0 and 1 after the model's normalization: the synthesized images stay in a real image's range
    norm = list(zip(spec["mean"], spec["std"]))
    bounds = ([-m / s for m, s in norm], [(1 - m) / s for m, s in norm])
    images = datafree.cached_images(models.load_model(name, checkpoint), datafree.Recipe(calib), shape,
                                    bounds=bounds, progress=progress)
    return [(images[i:i + CALIB_BATCH], None) for i in range(0, len(images), CALIB_BATCH)]


def refuse_cnn(name: str, what: str) -> None:
    """``QuantError`` for a CNN: ``what`` (per-site widths, ...) exists for transformers only so far."""
    if models.model_info(name).family == "cnn":
        raise QuantError(f"{what} are not supported for CNNs yet ({name!r}); use a uniform WnAn")


def default_methods(name: str) -> list[str]:
    """Every method that quantizes ``name``'s family."""
    from quant.methods import method_names

    return list(cnn.METHODS) if models.model_info(name).family == "cnn" else method_names()


def make_plan(name: str, method: str, wbits: int, abits: int, *, checkpoint: str | None = None,
              data: str | None = None, progress: bool = True, spec: Transformer | None = None,
              sites: Sites | None = None, batches: list | None = None, calib: str = "real") -> QuantPlan | CnnPlan:
    """Calibrate ``method`` on the model's calibration split (or ``batches``, or with ``calib`` = zeroq / dsg
    a CNN's synthesized images), with ``sites``' per-site widths over WnAn; the plan records the calibration
    time (synthesizing images not included: they are cached)."""
    check_bits("wbits", wbits)
    check_bits("abits", abits)
    spec = spec if spec is not None else load_spec(name, checkpoint)
    check_method(spec, method)
    if batches is None:
        batches = calibration_batches(name, data, calib, checkpoint=checkpoint, progress=progress)
    if isinstance(spec, CNN):
        if sites:
            refuse_cnn(name, "per-site widths")
        start = time.perf_counter()
        plan = cnn.calibrate(spec.copy(), method, batches, wbits, abits, progress=progress)
        plan.meta["calib_seconds"] = round(time.perf_counter() - start, 2)
        plan.meta["model"] = models.model_info(name).name
        plan.meta["calib"] = calib
        return plan
    kw = {}
    if sites:
        sites.check(linears(spec), chosen_points(spec, batches[0]))
        kw["sites"] = sites
    if method == "bibert":  # the trained binary student, cached by content hash (trains on first use)
        from ptq2rtl import bibert

        spec = spec.copy()
        spec.extra["bibert_student"] = bibert.student(name, spec, progress=progress)
    start = time.perf_counter()
    plan = get_method(method)(spec.copy(), batches, wbits, abits, progress=progress, **kw)
    plan.meta["calib_seconds"] = round(time.perf_counter() - start, 2)
    plan.meta["model"] = models.model_info(name).name
    return plan


def quantize(name: str, method: str, wbits: int, abits: int, **kw) -> tuple[IntegerProgram, QuantPlan]:
    plan = make_plan(name, method, wbits, abits, **kw)
    return lower_plan(plan), plan


def lower_plan(plan: QuantPlan | CnnPlan) -> IntegerProgram:
    """The integer program of a plan: a binarized encoder's own lowering, else the shared one."""
    return plan.lower() if isinstance(plan, BinaryPlan) else lower(plan)


def _image_counts(logits: np.ndarray | torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit1 = int((top5[:, 0] == labels).sum())
    hit5 = int((top5 == labels[:, None]).any(dim=1).sum())
    return hit1, hit5


@lru_cache(maxsize=4)
def fp32_embeddings(name: str, limit: int | None = None, data: str | None = None) -> torch.Tensor:
    """Normalized FP32 sentence embeddings of the evaluation split (the reference for text metrics)."""
    fwd = Forward(load_spec(name))
    with torch.no_grad():
        embs = [fwd(inputs) for inputs, _ in models.iter_batches(name, "eval", EVAL_BATCH, data=data, limit=limit)]
    return torch.nn.functional.normalize(torch.cat(embs), dim=-1)


def _evaluate(name: str, run_batch, *, data=None, limit=None, desc: str, progress: bool) -> dict:
    info = models.model_info(name)
    batches = models.iter_batches(name, "eval", EVAL_BATCH, data=data, limit=limit)
    if info.task == "image":
        n = hit1 = hit5 = 0
        for inputs, labels in tqdm(batches, desc=desc, disable=not progress, leave=False):
            a, b = _image_counts(run_batch(inputs), labels)
            n, hit1, hit5 = n + len(labels), hit1 + a, hit5 + b
        return {"model": name, "n": n, "top1": 100.0 * hit1 / n, "top5": 100.0 * hit5 / n}
    embs = [torch.as_tensor(np.asarray(run_batch(inputs), dtype=np.float64)).float()
            for inputs, _ in tqdm(batches, desc=desc, disable=not progress, leave=False)]
    emb = torch.nn.functional.normalize(torch.cat(embs), dim=-1)
    return {"model": name, "n": len(emb), **models.text_metrics(emb, fp32_embeddings(name, limit, data))}


def evaluate_program(program: IntegerProgram, *, data: str | None = None, limit: int | None = None,
                     progress: bool = True) -> dict:
    """Integer protocol: the golden engine runs the program on the evaluation split."""
    out = program.outputs[0]

    def run_batch(inputs):
        return engine.run(program, program_inputs(program, inputs)).outputs[out]

    result = _evaluate(program.model, run_batch, data=data, limit=limit, desc="eval (integer)", progress=progress)
    return {**result, "protocol": "integer", **{k: program.meta.get(k) for k in ("method", "wbits", "abits")}}


def evaluate_float(name: str, spec: Transformer, *, data: str | None = None, limit: int | None = None,
                   progress: bool = True) -> dict:
    """The float forward of ``spec`` (a compressed structure of model ``name``: ``quant.compress``) against
    ``name``'s FP32 reference."""
    fwd = Forward(spec)

    def run_batch(inputs):
        with torch.no_grad():
            return fwd(inputs)

    return {**_evaluate(name, run_batch, data=data, limit=limit, desc="eval (fp32)", progress=progress),
            "protocol": "fp32"}


def evaluate_paper(plan: QuantPlan | CnnPlan, *, data: str | None = None, limit: int | None = None,
                   progress: bool = True) -> dict:
    """Paper protocol: fake-quant linears and matmuls, LayerNorm / Softmax / GELU / residuals in float (a CNN:
    fake-quant weights and activations, the arithmetic in float)."""
    if isinstance(plan, CnnPlan):
        fwd = cnn.paper_forward(plan)
    else:
        fwd = plan.forward() if isinstance(plan, BinaryPlan) else paper_forward(plan)

    def run_batch(inputs):
        with torch.no_grad():
            return fwd(inputs)

    result = _evaluate(plan.meta.get("model", plan.spec.name), run_batch, data=data, limit=limit,
                       desc="eval (paper)", progress=progress)
    return {**result, "protocol": "paper", "method": plan.method, "wbits": plan.wbits, "abits": plan.abits}


def sweep(name: str, methods: list[str], bits: list[int], *, protocols: tuple[str, ...] = ("paper", "integer"),
          checkpoint: str | None = None, data: str | None = None, limit: int | None = None, progress: bool = True,
          on_program=None, calib: str = "real"):
    """Yield one row per method and width WnAn: calibration time and the metrics of each protocol (a plan the
    lowering refuses gives a row with ``refused`` and no integer metrics).

    ``on_program(method, bits, program)`` sees each lowered program (the report simulates and caches them).
    """
    for b in bits:
        check_bits("bits", b)
    spec = load_spec(name, checkpoint)
    for method in methods:
        check_method(spec, method)
        for b in bits:
            plan = make_plan(name, method, b, b, checkpoint=checkpoint, data=data, progress=progress, spec=spec,
                             calib=calib)
            row = {"model": name, "method": method, "wbits": b, "abits": b, "calib_seconds": plan.meta["calib_seconds"]}
            if "paper" in protocols:
                row["paper"] = _metrics(evaluate_paper(plan, data=data, limit=limit, progress=progress))
            if "integer" in protocols or on_program is not None:
                try:
                    program = lower_plan(plan)
                except (QuantError, ProgramError) as exc:  # a plan no program can carry: a row that says why
                    row["refused"] = f"not lowered: {exc}"
                    yield row
                    continue
                if on_program is not None:
                    on_program(method, b, program)
                if "integer" in protocols:
                    row["integer"] = _metrics(evaluate_program(program, data=data, limit=limit, progress=progress))
            yield row


def _metrics(result: dict) -> dict:
    return {k: result[k] for k in ("top1", "top5", "cosine", "nn_agreement", "n") if k in result}
