"""Greedy mixed precision (MPTQ-ViT's Greedy MP): per-site weight and activation widths under a budget.

Every site (a linear's weights, or an activation point whose width the method chooses) starts at the
uniform WnAn ``bits``; the sensitivity rows (``ptq2rtl.sensitivity``: each site raised alone to ``high``,
the method calibrated again, the program run by the golden engine) give each site its gain in the metric
and its cost: the energy of one inference on ``accel`` by the cost model, or the weights' size. Sites are
then raised greedily, the largest gain per unit of cost first, while the summed costs stay within the
budget; the chosen scheme is calibrated, run and priced as a whole, and if it lands over the budget (the
costs need not add) the last site raised is dropped until it fits.

Direction, the choice made here: the paper lowers layers one at a time from the wide scheme, the least
loss per bit saved first; this raises sites from the narrow one, the largest gain per cost first. With
one measurement per site the two orders agree when the sites' effects add; measured from the narrow
scheme, each gain is taken where the chosen point lies (most sites stay narrow).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tqdm import tqdm

from ptq2rtl import flows, sensitivity
from quant.methods import get_method
from quant.plan import Sites, chosen_points, linears
from quant.quantizers import QuantError, check_bits

QUANTITIES = {"energy": "µJ", "size": "kB"}  #: what a budget bounds, and its unit


@dataclass(frozen=True)
class Budget:
    """``quantity`` (energy on the accelerator, or the weights' size) at most ``value``, or at most what the
    uniform scheme W``scheme``A``scheme`` costs."""

    quantity: str
    value: float | None = None
    scheme: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """``energy:4000`` (µJ), ``size:900`` (kB of weights), ``energy:W6A6`` (what uniform W6A6 costs)."""
        quantity, _, amount = text.partition(":")
        if quantity not in QUANTITIES or not amount:
            raise QuantError(f"budget {text!r} must be KIND:AMOUNT with KIND one of {', '.join(QUANTITIES)} "
                             f"(e.g. energy:4000 in µJ, size:900 in kB, energy:W6A6)")
        scheme = re.fullmatch(r"W(\d)A(\d)", amount)
        if scheme:
            if scheme[1] != scheme[2]:
                raise QuantError(f"budget scheme {amount!r} must be a uniform WnAn (n the same twice)")
            return cls(quantity, scheme=check_bits("budget scheme bits", int(scheme[1])))
        try:
            value = float(amount)
        except ValueError:
            raise QuantError(f"budget amount {amount!r} is neither a number nor a scheme WnAn") from None
        if not value > 0:
            raise QuantError(f"budget amount must be positive, got {amount}")
        return cls(quantity, value=value)

    def __str__(self) -> str:
        return f"{self.quantity} <= " + (f"uniform W{self.scheme}A{self.scheme}" if self.scheme
                                         else f"{self.value:g} {QUANTITIES[self.quantity]}")


def weight_kilobytes(program) -> float:
    """The program's weights at their own widths, in kB (what the weight DRAM and buffers hold): every op that
    carries a ``weight`` parameter and its ``wbits``."""
    bits = sum(op.params["weight"].size * op.attrs["wbits"] for op in program.ops if "weight" in op.params)
    return bits / 8 / 1000


def price(program, accel, seq_len: int) -> dict:
    """Energy (µJ) of one inference on ``accel`` and the weights' size (kB), or why ``accel`` refuses it."""
    from ptq2rtl.explore import price_point

    cost = price_point(program, accel, seq_len)  # refused by sim.accel.check_program first
    if "refused" in cost:
        return {"size": weight_kilobytes(program), "refused": cost["refused"]}
    return {"size": weight_kilobytes(program), "energy": cost["energy_j"] * 1e6, "cycles": cost["cycles"]}


def greedy(model: str, method: str, bits: int, budget: Budget, *, accel, high: int = 8, by: str = "site",
           limit: int | None = None, seq_len: int = 128, checkpoint: str | None = None, data: str | None = None,
           progress: bool = True) -> dict:
    """Greedy MP for ``model`` under ``method``: the rows it measured, the sites it raised and the chosen
    scheme measured whole, beside the uniform schemes."""
    check_bits("bits", bits)
    check_bits("high", high)
    if high <= bits:
        raise QuantError(f"high={high} must be wider than bits={bits}")
    get_method(method)
    flows.refuse_cnn(model, "per-site widths")
    spec = flows.load_spec(model, checkpoint)
    batches = flows.calibration_batches(model, data)
    groups = sensitivity.groups(list(linears(spec)), chosen_points(spec, batches[0]), high, by)

    def measure(width: int, sites: Sites | None) -> dict:
        got = sensitivity.measure_scheme(model, method, width, sites, spec=spec, batches=batches, limit=limit,
                                         data=data)
        return {"metric": got["metric"], "n": got["n"], "calib_seconds": got["calib_seconds"],
                **price(got["program"], accel, seq_len)}

    widths = sorted({bits, high} | ({budget.scheme} if budget.scheme else set()))
    bar = tqdm(total=len(widths) + len(groups) + 1, desc=f"greedy MP ({method} W{bits}A{bits})", disable=not progress)
    uniform = {}
    for w in widths:
        uniform[f"W{w}A{w}"] = measure(w, None)
        bar.update()
    base = uniform[f"W{bits}A{bits}"]
    if "refused" in base:
        raise QuantError(f"{accel.name} cannot run the uniform W{bits}A{bits} program: {base['refused']}")
    limit_value = budget.value
    if budget.scheme:
        ref = uniform[f"W{budget.scheme}A{budget.scheme}"]
        if budget.quantity not in ref:
            raise QuantError(f"the budget's scheme W{budget.scheme}A{budget.scheme}: {ref['refused']}")
        limit_value = ref[budget.quantity]
    if base[budget.quantity] > limit_value:
        raise QuantError(f"uniform W{bits}A{bits} already costs {base[budget.quantity]:.1f} "
                         f"{QUANTITIES[budget.quantity]}, over the budget ({budget}: {limit_value:.1f})")
    rows = []
    for g in groups:
        row = {"site": g.label, "kind": g.kind, "sites": g.sites, **measure(bits, g.sites)}
        row["gain"] = row["metric"] - base["metric"]
        row["cost"] = row[budget.quantity] - base[budget.quantity] if budget.quantity in row else None
        rows.append(row)
        bar.update()
    ranked = sorted((r for r in rows if r["cost"] is not None and r["gain"] > 0),
                    key=lambda r: -r["gain"] / max(r["cost"], 1e-9))
    chosen, spent = [], 0.0
    for r in ranked:
        if base[budget.quantity] + spent + max(r["cost"], 0.0) <= limit_value:
            chosen.append(r)
            spent += max(r["cost"], 0.0)
    while True:
        sites = Sites(weights={k: v for r in chosen for k, v in r["sites"].weights.items()},
                      acts={k: v for r in chosen for k, v in r["sites"].acts.items()})
        point = measure(bits, sites)
        if not chosen or (budget.quantity in point and point[budget.quantity] <= limit_value):
            break
        chosen.pop()  # the costs did not add up: the last site raised goes back
    bar.update()
    bar.close()
    return {"model": model, "method": method, "bits": bits, "high": high, "by": by, "accel": accel.name,
            "budget": str(budget), "budget_value": limit_value, "quantity": budget.quantity,
            "unit": QUANTITIES[budget.quantity],
            "metric": sensitivity.metric_of(model), "n": base["n"], "uniform": uniform,
            "rows": [{k: v for k, v in r.items() if k != "sites"} for r in rows],
            "chosen": [{"site": r["site"], "kind": r["kind"], "gain": r["gain"], "cost": r["cost"]} for r in chosen],
            "predicted": {"metric": base["metric"] + sum(r["gain"] for r in chosen),
                          budget.quantity: base[budget.quantity] + sum(r["cost"] for r in chosen)},
            "sites": sites.as_meta(), "point": point}


def format_table(result: dict) -> str:
    key, unit, quantity = result["metric"], result["unit"], result["quantity"]
    lines = [f"{result['model']} {result['method']}: greedy MP from W{result['bits']}A{result['bits']} "
             f"(sites raised to {result['high']} bits, by {result['by']}) under {result['budget']} "
             f"= {result['budget_value']:.1f} {unit} on {result['accel']}; {key} on {result['n']} samples",
             f"{'scheme':34s} {key:>9s} {'energy µJ':>11s} {'size kB':>9s}", "-" * 66]

    def line(label, p):
        energy = f"{p['energy']:11.1f}" if "energy" in p else f"{'refused':>11s}"
        return f"{label:34s} {p['metric']:9.4f} {energy} {p['size']:9.1f}"

    for name, p in result["uniform"].items():
        lines.append(line(f"uniform {name}", p))
    lines.append(line(f"greedy MP ({len(result['chosen'])} sites raised)", result["point"]))
    lines += ["", f"sites raised, largest gain per {unit} first:"]
    for c in result["chosen"]:
        lines.append(f"  {c['site']:28s} {c['kind']:8s} gain {c['gain']:+.4f}  {quantity} {c['cost']:+.1f} {unit}")
    return "\n".join(lines)
