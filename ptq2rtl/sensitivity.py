"""Sensitivity: how much of a WnAn scheme's loss each quantization site (or each layer) carries.

Every row raises one site to ``high`` bits while the rest stay at WnAn: a linear's weights, or an
activation point whose width the method chooses (a linear's or a matmul's input). The method is
calibrated again with that override (``quant.plan.Sites``), so a method that adapts to its widths
(RepQ's reparameterization, APQ's block-wise search) adapts to it, and the model's metric is measured
under the integer protocol (the golden engine runs the lowered program) or the paper protocol.
``--by layer`` raises every site of one block at once (and the embedding / head sites as one group).
The first row is the uniform WnAn scheme, the last the uniform W{high}A{high} one: the gain of a row
is its metric minus the first row's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from ptq2rtl import flows, models
from quant.lower import lower
from quant.methods import get_method
from quant.plan import Sites, chosen_points, linears
from quant.quantizers import QuantError, check_bits

BY = ("site", "layer")


@dataclass(frozen=True)
class Group:
    """One row's sites: a label, what kind of sites it raises, and the override."""

    label: str
    kind: str  # "weights", "acts" or "layer"
    sites: Sites


def _block_of(name: str) -> str:
    """``blocks.3`` for a block's sites; ``head`` for the final norm and the classifier, else ``embed``."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return ".".join(parts[:2])
    return "head" if parts[0] in ("head", "norm", "pool") else "embed"


def _order(block: str) -> tuple[int, int]:
    if block == "embed":
        return (0, 0)
    return (2, 0) if block == "head" else (1, int(block.split(".")[1]))


def groups(lin_names: list[str], points: list[str], high: int, by: str) -> list[Group]:
    """The rows of a sensitivity run, in forward order: per site (a linear's weights, then the
    activation points of its block) or per layer (a block's every site at once)."""
    if by not in BY:
        raise QuantError(f"unknown grouping {by!r} (accepted: {', '.join(BY)})")
    if by == "site":
        out = [Group(n, "weights", Sites(weights={n: high})) for n in lin_names]
        out += [Group(p, "acts", Sites(acts={p: high})) for p in points]
        return sorted(out, key=lambda g: _order(_block_of(g.label)))  # stable: weights before acts per block
    blocks = sorted(dict.fromkeys(_block_of(n) for n in lin_names + points), key=_order)
    return [Group(b, "layer", Sites(weights={n: high for n in lin_names if _block_of(n) == b},
                                    acts={p: high for p in points if _block_of(p) == b})) for b in blocks]


def metric_of(model: str) -> str:
    return "top1" if models.model_info(model).task == "image" else "cosine"


def measure_scheme(model: str, method: str, bits: int, sites: Sites | None, *, spec, batches,
                   protocol: str = "integer", limit: int | None = None, data: str | None = None) -> dict:
    """Calibrate ``method`` at WnAn with the ``sites`` overrides and measure the model's metric; returns it
    with the sample count, the calibration time and the lowered program (None under the paper protocol)."""
    plan = flows.make_plan(model, method, bits, bits, spec=spec, batches=batches, sites=sites, progress=False)
    program = lower(plan) if protocol == "integer" else None
    if program is not None:
        result = flows.evaluate_program(program, data=data, limit=limit, progress=False)
    else:
        result = flows.evaluate_paper(plan, data=data, limit=limit, progress=False)
    return {"metric": result[metric_of(model)], "n": result["n"], "calib_seconds": plan.meta["calib_seconds"],
            "program": program}


def run(model: str, method: str, bits: int, *, high: int = 8, by: str = "site", protocol: str = "integer",
        limit: int | None = None, checkpoint: str | None = None, data: str | None = None,
        progress: bool = True) -> dict:
    """Calibrate and measure every row of :func:`groups`; returns the rows and what they were run at."""
    check_bits("bits", bits)
    check_bits("high", high)
    if high <= bits:
        raise QuantError(f"high={high} must be wider than bits={bits}")
    if protocol not in ("integer", "paper"):
        raise QuantError(f"unknown protocol {protocol!r} (accepted: integer, paper)")
    get_method(method)
    flows.refuse_cnn(model, "per-site widths")
    key = metric_of(model)
    spec = flows.load_spec(model, checkpoint)
    batches = flows.calibration_batches(model, data)
    rows_of = groups(list(linears(spec)), chosen_points(spec, batches[0]), high, by)

    def measure(label: str, kind: str, width: int, sites: Sites | None) -> dict:
        got = measure_scheme(model, method, width, sites, spec=spec, batches=batches, protocol=protocol,
                             limit=limit, data=data)
        return {"site": label, "kind": kind, "metric": got["metric"], "n": got["n"],
                "calib_seconds": got["calib_seconds"]}

    todo = [("uniform", "-", bits, None)] + [(g.label, g.kind, bits, g.sites) for g in rows_of]
    todo.append(("uniform", "-", high, None))
    rows = []
    for label, kind, width, sites in tqdm(todo, desc=f"sensitivity ({method} W{bits}A{bits})", disable=not progress):
        row = measure(label, kind, width, sites)
        row["scheme"] = f"W{width}A{width}" if sites is None else f"W{bits}A{bits} + {label} {kind} at {high}"
        rows.append(row)
    base = rows[0]["metric"]
    for row in rows:
        row["gain"] = row["metric"] - base
    return {"model": model, "method": method, "bits": bits, "high": high, "by": by, "protocol": protocol,
            "metric": key, "n": rows[0]["n"], "rows": rows}


def format_table(result: dict) -> str:
    key = result["metric"]
    head = (f"{result['model']} {result['method']} W{result['bits']}A{result['bits']}: one "
            f"{result['by']} at a time to {result['high']} bits, {result['protocol']} protocol, "
            f"{key} on {result['n']} samples")
    lines = [head, f"{'site':28s} {'kind':8s} {key:>9s} {'gain':>9s} {'calib s':>8s}", "-" * 66]
    for r in result["rows"]:
        label = r["site"] if r["kind"] != "-" else f"(uniform {r['scheme']})"
        gain = f"{r['gain']:+9.4f}" if r is not result["rows"][0] else f"{'-':>9s}"
        lines.append(f"{label:28s} {r['kind']:8s} {r['metric']:9.4f} {gain} {r['calib_seconds']:8.1f}")
    return "\n".join(lines)
