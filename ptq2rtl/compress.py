"""``ptq2rtl compress``: distillation, pruning and post-training quantization of a sentence encoder, alone or
combined, and the table that compares the combinations.

A combination runs in a fixed order: distil a student from the FP32 model (``--distill``), prune it
(``--prune``), optionally recover by a short distillation from the FP32 model (``--recover``), then quantize
it with a registered PTQ method (``--method``, ``--bits``). Each row reports parameters, model bytes, the
cosine and nearest-neighbour agreement of its sentence embeddings with FP32 minilm's on the evaluation split
(the integer protocol where quantized, the float forward otherwise), the wall time of that evaluation (the
golden engine, or the float forward), and the cycles and energy of one 128-token inference on an
accelerator. A row with no PTQ has no integer program of its own: its hardware columns price the baseline
W8A8 program of the same structure (the cost model reads shapes and widths, not weight values), and it
does not compete for the best cosine per joule.

Training data: the corpus sentences outside the evaluation split (the calibration split and the unused
rest), so evaluation stays disjoint from everything trained on. Trained specs are cached under
``$XDG_CACHE_HOME/ptq2rtl/compress/`` by a hash of the recipe, the FP32 model's tensors, the training
sentences and the torch version; the table's rows likewise, with the source they depend on, so a re-run
takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ptq2rtl import corpus, flows, models
from quant.compress import (PruneConfig, TrainConfig, distill, from_tensors, make_student, parameter_count, prune,
                            spec_tensors, student_layers)
from quant.model import Transformer
from quant.quantizers import QuantError

RECIPE = 1  # bump when the training code changes what a cached spec holds
DEFAULT_ACCEL = "edge-int8"
SEQ_LEN = 128
PRICE_METHOD = "baseline"  # the program that prices a float row's structure, at W8A8


@dataclass(frozen=True)
class DistillSpec:
    """A student: ``layers`` of the teacher's blocks, ``ffn`` neurons a block (0: the teacher's), trained by
    ``train``."""

    layers: int = 3
    ffn: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class Combination:
    distill: DistillSpec | None = None
    prune: PruneConfig = field(default_factory=PruneConfig)
    recover: TrainConfig | None = None  # distillation after pruning, the structure and the zeros kept
    method: str | None = None
    wbits: int = 8
    abits: int = 8

    def label(self) -> str:
        parts = []
        if self.distill:
            parts.append(f"KD L{self.distill.layers}" + (f" F{self.distill.ffn}" if self.distill.ffn else ""))
        p = self.prune
        parts += [f"{name} {100 * v:g}%" for name, v in (("heads", p.heads), ("ffn", p.ffn), ("mag", p.magnitude))
                  if v]
        if self.recover:
            parts.append(f"rec {self.recover.epochs:g}ep")
        if self.method:
            parts.append(f"{self.method} W{self.wbits}A{self.abits}")
        return " + ".join(parts) or "FP32"


# ------------------------------------------------------------------ command-line values
_TRAIN_KEYS = {"epochs": float, "batch": int, "lr": float, "hidden_weight": float, "seed": int}


def _options(text: str, accepted: dict[str, type], what: str) -> dict:
    """``key=value,key=value`` with the keys and types ``accepted``; a one-line error naming the bad part."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in accepted:
            raise QuantError(f"{what}: {part!r} is not KEY=VALUE with KEY one of {', '.join(accepted)}")
        try:
            out[key] = accepted[key](value)
        except ValueError:
            raise QuantError(f"{what}: {key}={value!r} is not a {accepted[key].__name__}") from None
    return out


def parse_distill(text: str) -> DistillSpec:
    """``layers=3,ffn=768,epochs=3,batch=32,lr=1e-3,hidden_weight=1,seed=0`` (every key optional)."""
    o = _options(text, {"layers": int, "ffn": int, **_TRAIN_KEYS}, "--distill")
    return DistillSpec(o.pop("layers", 3), o.pop("ffn", 0), TrainConfig(**o))


def parse_prune(text: str) -> PruneConfig:
    """``heads=0.25,ffn=0.25,magnitude=0.5`` (fractions; every key optional)."""
    return PruneConfig(**_options(text, {"heads": float, "ffn": float, "magnitude": float}, "--prune"))


def parse_recover(text: str) -> TrainConfig:
    """``epochs=1,lr=1e-3,...``: the training of a recovery."""
    return TrainConfig(**_options(text, _TRAIN_KEYS, "--recover"))


def parse_bits(text: str) -> tuple[int, int]:
    """``8`` (W8A8) or ``4/8`` (W4A8)."""
    try:
        bits = [int(b) for b in text.split("/")]
    except ValueError:
        raise QuantError(f"--bits {text!r}: expected WIDTH or WBITS/ABITS, e.g. 8 or 4/8") from None
    if len(bits) not in (1, 2):
        raise QuantError(f"--bits {text!r}: expected WIDTH or WBITS/ABITS, e.g. 8 or 4/8")
    return bits[0], bits[-1]


# ------------------------------------------------------------------ data and cache
def train_sentences() -> list[str]:
    """The corpus sentences outside the evaluation split, in corpus order."""
    held_out = set(corpus.corpus_split("eval"))
    return [s for s in corpus.load_sentences() if s not in held_out]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptq2rtl" / "compress"


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def tensors_digest(spec: Transformer) -> str:
    """A hash of every tensor of ``spec`` (the FP32 teacher's identity in a cache key)."""
    tensors, structure = spec_tensors(spec)
    tables = [spec.word, spec.pos_emb] + ([spec.type_emb] if spec.type_emb is not None else [])
    return _digest(structure, *(t.numpy().tobytes() for t in [*tensors.values(), *tables]))


def _cached_spec(key: str, teacher: Transformer, build) -> tuple[Transformer, dict]:
    """The spec cached under ``key``, or ``build()``'s (spec, log), saved there first."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return from_tensors(teacher, load_file(str(path)), meta["structure"]), {**meta["log"], "cached": True}
    spec, log = build()
    tensors, structure = spec_tensors(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    meta_path.write_text(json.dumps({"structure": structure, "log": log}, indent=2) + "\n")
    return spec, {**log, "cached": False}


# ------------------------------------------------------------------ the pipeline
def compressed_spec(name: str, combo: Combination, *, teacher: Transformer | None = None,
                    progress: bool = True) -> tuple[Transformer, dict]:
    """The float structure a combination quantizes: distilled, pruned, recovered. Returns it and what was done
    (the training logs, with their wall time and whether they came from the cache; what pruning removed)."""
    if models.model_info(name).task != "text":
        raise QuantError(f"compress distils and prunes sentence encoders (minilm, encoder folders), not {name!r}")
    teacher = teacher if teacher is not None else flows.load_spec(name)
    calib = [inputs for inputs, _ in models.iter_batches(name, "calib", flows.CALIB_BATCH)]
    sentences = train_sentences() if models.model_info(name).name == "minilm" else None
    if sentences is None and (combo.distill or combo.recover):
        raise QuantError(f"compress trains on the standard-library corpus, minilm's; {name!r} has other sentences")
    base = [RECIPE, models.model_info(name).name, tensors_digest(teacher), _digest(sentences), torch.__version__]

    def tokenize(batch: list[str]) -> dict:
        return models.tokenize(batch, name)

    info: dict = {}
    spec, layer_map = teacher, list(range(len(teacher.blocks)))
    if combo.distill:
        d = combo.distill
        layer_map = student_layers(len(teacher.blocks), d.layers)

        def train_student():
            student = make_student(teacher, d.layers, d.ffn, calib)
            return distill(student, teacher, layer_map, sentences, tokenize, d.train, progress=progress)

        spec, info["distill"] = _cached_spec(_digest(*base, "distill", asdict(d)), teacher, train_student)
    if not combo.prune.none:
        spec, info["pruned"] = prune(spec, combo.prune, calib)
    if combo.recover:
        pruned, rec = spec, combo.recover
        key = _digest(*base, "recover", asdict(combo.distill) if combo.distill else None, asdict(combo.prune),
                      asdict(rec))
        spec, info["recover"] = _cached_spec(
            key, teacher, lambda: distill(pruned, teacher, layer_map, sentences, tokenize, rec, progress=progress))
    return spec, info


def program_bytes(program) -> int:
    """The bytes of a program's parameters at their widths: weights at ``wbits``, embedding tables at their
    output width, every other table (biases, multipliers, LayerNorm and GELU tables) as stored."""
    from sim.ops import OPS

    total = 0.0
    for op in program.ops:
        for key, value in op.params.items():
            if key == "weight":
                total += value.size * op.attrs["wbits"] / 8
            elif OPS[op.kind].unit == "dram":  # an embedding table: rows looked up at the output's width
                total += value.size * op.attrs["out_bits"] / 8
            else:
                total += value.nbytes
    return int(total)


def _price(program, accel) -> dict:
    from ptq2rtl.simulate import simulate_report

    sim = simulate_report(program, accel, seq_len=SEQ_LEN)
    return {"cycles": sim["cycles"], "energy_j": sim["energy_j"], "macs": sim["macs"], "basis": sim["basis"]["kind"]}


def run(name: str, combo: Combination, *, limit: int | None = None, accel=DEFAULT_ACCEL, output: str | None = None,
        progress: bool = True, teacher: Transformer | None = None) -> dict:
    """One combination, measured: a row of the table (module doc). ``output`` saves its integer program."""
    from ptq2rtl.mixed import weight_kilobytes
    from quant.lower import lower
    from sim.accel import load_accel

    if output and not combo.method:
        raise QuantError("-o writes the integer program: it needs --method")
    teacher = teacher if teacher is not None else flows.load_spec(name)
    if combo.method:
        flows.check_method(teacher, combo.method)
        if combo.method == "tpvit" and combo.prune.heads:  # its probability-grid search reshapes by the model's heads
            raise QuantError("tpvit searches its attention grids with every block at the model's head count; "
                             "it does not quantize a model with pruned heads")
    accel = load_accel(accel) if isinstance(accel, str) else accel
    spec, info = compressed_spec(name, combo, teacher=teacher, progress=progress)
    count = parameter_count(spec)
    row = {"combination": combo.label(), "config": json.loads(json.dumps(asdict(combo), default=str)),
           "params": count["total"], "encoder_params": count["encoder"], "nonzero_weights": count["nonzero"],
           "layers": len(spec.blocks), "heads": [spec.heads_of(b) for b in spec.blocks],
           "ffn": [b.fc1.w.shape[0] for b in spec.blocks], **info}
    if combo.method:
        program, plan = flows.quantize(name, combo.method, combo.wbits, combo.abits, spec=spec, progress=progress)
        if output:
            program.save(output)
        start = time.perf_counter()
        metrics = flows.evaluate_program(program, limit=limit, progress=progress)
        row["wall_s"] = round(time.perf_counter() - start, 2)
        row |= {"calib_seconds": plan.meta["calib_seconds"], "model_bytes": program_bytes(program),
                "weight_bytes": round(weight_kilobytes(program) * 1000), "priced": "its program"}
    else:
        start = time.perf_counter()
        metrics = flows.evaluate_float(name, spec, limit=limit, progress=progress)
        row["wall_s"] = round(time.perf_counter() - start, 2)
        weights = sum(getattr(b, n).w.numel() for b in spec.blocks for n in ("q", "k", "v", "proj", "fc1", "fc2"))
        program, _ = flows.quantize(name, PRICE_METHOD, 8, 8, spec=spec, progress=progress)
        row |= {"model_bytes": 4 * count["total"], "weight_bytes": 4 * weights,
                "priced": f"{PRICE_METHOD} W8A8 of the same structure"}
    row |= {"protocol": metrics["protocol"], "n": metrics["n"], "cosine": metrics["cosine"],
            "nn_agreement": metrics["nn_agreement"], "accel": accel.name, **_price(program, accel)}
    return row


# ------------------------------------------------------------------ the table
def _kd(epochs: float = 3.0) -> DistillSpec:
    return DistillSpec(layers=3, train=TrainConfig(epochs=epochs))


HEADS, FFN, MAG = PruneConfig(heads=0.25), PruneConfig(ffn=0.25), PruneConfig(magnitude=0.5)
TABLE_METHOD = "repq"


def table_combinations() -> list[Combination]:
    """The table's combinations: FP32, each technique alone, each pair, all three."""
    kd, q8, q4 = _kd(), dict(method=TABLE_METHOD, wbits=8, abits=8), dict(method=TABLE_METHOD, wbits=4, abits=4)
    return [
        Combination(),
        Combination(distill=kd),
        Combination(prune=HEADS),
        Combination(prune=FFN),
        Combination(prune=MAG),
        Combination(**q8),
        Combination(**q4),
        Combination(distill=kd, prune=HEADS),
        Combination(distill=kd, prune=MAG),
        Combination(distill=kd, **q8),
        Combination(prune=HEADS, **q8),
        Combination(prune=FFN, **q8),
        Combination(prune=MAG, **q8),
        Combination(prune=PruneConfig(heads=0.25, ffn=0.25), **q8),
        Combination(distill=kd, prune=HEADS, **q8),
        Combination(distill=kd, prune=MAG, **q8),
        Combination(distill=kd, prune=HEADS, **q4),
        Combination(prune=PruneConfig(heads=0.5), recover=TrainConfig(epochs=1)),
        Combination(prune=PruneConfig(heads=0.5), recover=TrainConfig(epochs=1), **q8),
    ]


def _row_key(name: str, combo: Combination, limit: int | None, accel, source: str) -> str:
    accel_fields = {k: v for k, v in asdict(accel).items() if k != "source"}
    return _digest(RECIPE, name, asdict(combo), limit, accel_fields, source)


def table(name: str = "minilm", combos: list[Combination] | None = None, *, limit: int | None = None,
          accel=DEFAULT_ACCEL, progress: bool = True, on_row=None) -> list[dict]:
    """Every combination's row (each cached by its combination, the evaluation, the accelerator and the source
    it depends on). ``on_row(row)`` sees each as it is ready."""
    from sim.accel import load_accel

    from ptq2rtl.explore import code_fingerprint

    accel = load_accel(accel) if isinstance(accel, str) else accel
    teacher = flows.load_spec(name)
    source = _digest(code_fingerprint(), Path(__file__).read_bytes())  # the source the rows depend on, at the start
    rows = []
    for combo in combos or table_combinations():
        path = cache_dir() / f"row-{_row_key(name, combo, limit, accel, source)}.json"
        if path.is_file():
            row = {**json.loads(path.read_text()), "row_cached": True}
        else:
            row = run(name, combo, limit=limit, accel=accel, progress=progress, teacher=teacher)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, indent=2, default=str) + "\n")
            row["row_cached"] = False
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def best_per_joule(rows: list[dict]) -> dict | None:
    """The quantized row of the highest cosine per joule (a float row's energy prices another program)."""
    quantized = [r for r in rows if r["protocol"] == "integer"]
    return max(quantized, key=lambda r: r["cosine"] / r["energy_j"]) if quantized else None


HEADER = (f"{'combination':<34s} {'params':>7s} {'nonzero':>7s} {'model':>8s} {'weights':>8s} {'cosine':>7s} "
          f"{'NN %':>6s} {'wall s':>7s} {'Mcycles':>8s} {'mJ':>7s} {'cos/mJ':>7s} {'train s':>8s}")


def format_row(r: dict) -> str:
    train = sum(r[k]["seconds"] for k in ("distill", "recover") if k in r)
    mark = "*" if r["protocol"] != "integer" else " "
    return (f"{r['combination']:<34s} {r['params'] / 1e6:6.2f}M {r['nonzero_weights'] / 1e6:6.2f}M "
            f"{r['model_bytes'] / 1e6:6.2f}MB {r['weight_bytes'] / 1e6:6.2f}MB {r['cosine']:7.4f} "
            f"{100 * r['nn_agreement']:6.1f} {r['wall_s']:7.1f} {r['cycles'] / 1e6:7.2f}{mark} "
            f"{1e3 * r['energy_j']:6.3f}{mark} {r['cosine'] / (1e3 * r['energy_j']):7.1f} "
            + (f"{train:8.0f}" if train else f"{'-':>8s}"))


def format_table(rows: list[dict]) -> str:
    r0 = rows[0]
    lines = [f"{r0['n']} evaluation sentences; cycles and energy: one {SEQ_LEN}-token inference on {r0['accel']}; "
             f"* a float row: cosine from the FP32 forward, hardware priced by the {PRICE_METHOD} W8A8 program of "
             f"its structure", HEADER, "-" * len(HEADER)]
    lines += [format_row(r) for r in rows]
    best = best_per_joule(rows)
    if best:
        lines.append(f"best cosine per joule (quantized rows): {best['combination']} "
                     f"({best['cosine']:.4f} at {1e3 * best['energy_j']:.3f} mJ)")
    return "\n".join(lines)
