"""``ptq2rtl explore``'s outputs: the results table (CSV + JSON), the Pareto fronts, their plots, a summary.

A front is per model (the models' metrics differ): the points no other point of that model beats on both
figures, among those the hardware runs and that carry both figures (area only where the spec asked for it
and a synthesis figure was found).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.plots import pareto  # noqa: E402

#: front -> (x, lower is better; y; whether a higher y is better)
FRONTS = {
    "accuracy-vs-energy": ("energy_j", "accuracy", True),
    "accuracy-vs-latency": ("latency_s", "accuracy", True),
    "energy-vs-area": ("area", "energy_j", False),
}
#: figure -> (scale, axis label)
AXES = {"energy_j": (1e6, "energy per inference (µJ)"), "latency_s": (1e3, "latency per inference (ms)"),
        "area": (1, "area (ECP5 LUT4 sites: LUT4 + 2 per CCU2C, from hw.synth)")}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
METRIC_LABEL = {"top1": "top-1 accuracy (%)", "cosine": "cosine similarity to FP32"}
#: the columns a person reads first; the rest follow in the rows' own order
LEAD = ("model", "method", "wbits", "abits", "sites", "metric", "accuracy", "accelerator")


def front(rows: list[dict], x: str, y: str, maximize: bool) -> list[int]:
    """Indices of the Pareto-optimal rows, by ``x``: no other row has an ``x`` at most as high and a ``y`` at
    least as good with one of them strictly better. Rows missing either figure take no part; of identical
    points the first one is kept."""
    idx = [i for i, r in enumerate(rows) if r.get(x) is not None and r.get(y) is not None]
    return [idx[j] for j in pareto([(rows[i][x], rows[i][y] if maximize else -rows[i][y]) for i in idx])]


def fronts(rows: list[dict]) -> dict[str, dict[str, list[int]]]:
    """Every front of every model: ``{model: {front: [row indices]}}``, empty fronts left out."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [i for i, r in enumerate(rows) if r["model"] == model]
        found = {name: [mine[j] for j in front([rows[i] for i in mine], x, y, up)]
                 for name, (x, y, up) in FRONTS.items()}
        out[model] = {name: f for name, f in found.items() if f}
    return out


def write(spec, rows: list[dict], out: Path, stats: dict) -> list[str]:
    """results.csv, results.json, one PNG per front and summary.md into ``out``; returns the file names."""
    from ptq2rtl.explore import _atomic_write

    found = fronts(rows)
    for name in FRONTS:
        column = f"front_{name.replace('-', '_')}"
        on = {i for f in found.values() for i in f.get(name, [])}
        for i, r in enumerate(rows):
            r[column] = i in on
    flat = [{k: v for k, v in r.items() if k != "energy_breakdown_j"} for r in rows]
    columns = list(LEAD) + [k for k in flat[0] if k not in LEAD]
    text = io.StringIO()
    w = csv.DictWriter(text, columns, lineterminator="\n")
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in r.items()} for r in flat)
    _atomic_write(out / "results.csv", text.getvalue())
    results = {"spec": spec.name, "spec_file": Path(spec.source).name, "seq_len": spec.seq_len,
               "area": spec.area.__dict__ if spec.area else None, "rows": rows,
               "fronts": {m: {n: [rows[i]["point_key"] for i in f] for n, f in fs.items()} for m, fs in found.items()}}
    _atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    plots = []
    for model, fs in found.items():
        for name, f in fs.items():
            plots.append(f"{model}-{name}.png")
            plot(rows, model, name, f, spec.grid_keys, out / plots[-1])
    _atomic_write(out / "summary.md", summary(spec, rows, found, plots, stats))
    return ["results.csv", "results.json", "summary.md", *plots]


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _short(r: dict, keys: list[str]) -> str:
    """The accelerator of a row in a few characters: its grid values."""
    return " ".join(_value(r[k]) if k == "array" else f"{k.split('.')[-1]}={_value(r[k])}" for k in keys
                    if r.get(k) is not None and k != "lanes") or r["accelerator"]


def plot(rows: list[dict], model: str, name: str, on_front: list[int], keys: list[str], path: Path) -> None:
    x, y, _ = FRONTS[name]
    mine = [r for r in rows if r["model"] == model and r.get(x) is not None and r.get(y) is not None]
    metric = mine[0]["metric"]
    label = dict(AXES)
    label["accuracy"] = (1, f"{METRIC_LABEL[metric]}, integer protocol")
    (xs, xl), (ys, yl) = label[x], label[y]
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    methods = sorted({r["method"] for r in mine})
    shapes = list(dict.fromkeys(str(r.get("array") or r["accelerator"]) for r in mine))  # the hardware, by marker
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(methods):
        for j, shape in enumerate(shapes):
            pts = [r for r in mine if r["method"] == m and str(r.get("array") or r["accelerator"]) == shape]
            ax.scatter([r[x] * xs for r in pts], [r[y] * ys for r in pts], s=24, alpha=0.6, color=cmap(i % 10),
                       marker=MARKERS[j % len(MARKERS)], edgecolor="none", zorder=2)
        ax.scatter([], [], color=cmap(i % 10), label=m)
    if len(shapes) > 1:
        for j, shape in enumerate(shapes):
            ax.scatter([], [], color="grey", marker=MARKERS[j % len(MARKERS)], label=shape)
    best = sorted((rows[i] for i in on_front), key=lambda r: r[x])
    fx, fy = [r[x] * xs for r in best], [r[y] * ys for r in best]
    ax.step(fx, fy, where="post", color="black", linewidth=1, zorder=3, label=f"Pareto front ({len(best)})")
    ax.scatter(fx, fy, s=70, facecolor="none", edgecolor="black", linewidth=1.2, zorder=4)
    if len(best) <= 12:
        for k, r in enumerate(best):
            ax.annotate(f"{r['method']} W{r['wbits']}A{r['abits']} {_short(r, keys)}", (r[x] * xs, r[y] * ys),
                        textcoords="offset points", xytext=(6, -10 if k % 2 else 4), fontsize=7)
    xv = [r[x] * xs for r in mine]
    if min(xv) > 0 and max(xv) / min(xv) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    bases = sorted({"compiled schedule" if r["basis"] == "schedule" else "analytic estimate" for r in mine})
    ax.set_title(f"{model}: {name.replace('-', ' ')} ({len(mine)} points; cycles: {', '.join(bases)})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, scale: float = 1, digits: int = 4) -> str:
    return "-" if v is None else f"{v * scale:.{digits}g}"


def summary(spec, rows: list[dict], found: dict, plots: list[str], stats: dict) -> str:
    keys = spec.grid_keys
    refused = [r for r in rows if r["refused"]]
    bases = {}
    for r in rows:
        if r["basis"]:
            bases[r["basis"]] = bases.get(r["basis"], 0) + 1
    c, u = stats["computed"], stats["reused"]
    n_prog = c["programs"] + u["programs"]
    lines = [f"# ptq2rtl explore: {spec.name}", "",
             f"`{Path(spec.source).name}`: {n_prog} programs x {len(spec.accels)} accelerators = {len(rows)} points; "
             f"{len(refused)} refused by the hardware check, the rest priced on "
             + ", ".join(f"{n} on {'the compiled schedule' if b == 'schedule' else 'the analytic estimate'}"
                         for b, n in sorted(bases.items())) + ".",
             f"This run computed {c['programs']} programs, {c['points']} points"
             + (f", {c['areas']} area lookups" if spec.area else "")
             + f" and reused {u['programs']} programs, {u['points']} points"
             + (f", {u['areas']} area lookups" if spec.area else "")
             + f" finished earlier: {stats['seconds']} s ({stats['where']}).", ""]
    if spec.area:
        have = sum(1 for r in rows if r["area"] is not None)
        lines += [f"Area ({spec.area.design} on {spec.area.target} {spec.area.part}, hw.synth's cache and the shipped "
                  f"records; no tool run): found for {have} of {len(rows)} points.", ""]
    for model, fs in found.items():
        mine = [r for r in rows if r["model"] == model]
        metric = mine[0]["metric"]
        lines += [f"## {model}: {METRIC_LABEL[metric]}, integer protocol on {mine[0]['n']} samples", ""]
        for name, f in fs.items():
            x, y, _ = FRONTS[name]
            lines += [f"### {name.replace('-', ' ')}: {len(f)} points on the front", "",
                      f"![{model} {name}]({model}-{name}.png)", "",
                      f"| method | widths | accelerator | {metric} | energy (µJ) | latency (ms) | cycles | area |",
                      "|---|---|---|---:|---:|---:|---:|---:|"]
            for r in sorted((rows[i] for i in f), key=lambda r: r[x]):
                lines.append(f"| {r['method']} | W{r['wbits']}A{r['abits']}{' ' + r['sites'] if r['sites'] else ''} "
                             f"| {_short(r, keys)} | {_fmt(r['accuracy'])} | {_fmt(r['energy_j'], 1e6)} "
                             f"| {_fmt(r['latency_s'], 1e3)} | {r['cycles']:,} | {_fmt(r['area'])} |")
            lines.append("")
    if refused:
        reasons = {}
        for r in refused:  # one line per kind of refusal: the op's name dropped
            why = re.sub(r"^.*?: op '[^']*' \((\w+)\): ", r"\1: ", r["refused"])
            reasons[why] = reasons.get(why, 0) + 1
        lines += ["## Refused", "", "| points | why |", "|---:|---|"]
        lines += [f"| {n} | {why} |" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
        lines.append("")
    return "\n".join(lines)
