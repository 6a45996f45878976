"""The report's PNG plots (matplotlib, Agg): accuracy vs energy, breakdowns, per-layer latency, synthesis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

METRIC = {"vit-digits": ("top1", "top-1 accuracy (%)"), "minilm": ("cosine", "cosine similarity to FP32")}
CLASSES = ("linear", "attention", "requant", "softmax", "gelu", "layernorm", "residual", "other")
COLORS = dict(zip(CLASSES, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")))
MARKERS = {8: "o", 6: "s", 4: "^", 3: "v"}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower energy and higher accuracy, by energy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_vs_energy(results: dict, model: str, accel: str, path: Path) -> None:
    key, label = METRIC[model]
    rows = [e for e in results["entries"] if e["model"] == model and "energy_j" in e["accel"][accel]]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    methods = sorted({e["method"] for e in rows})
    cmap = plt.get_cmap("tab10")
    pts = []
    for e in rows:
        x = e["accel"][accel]["energy_j"] * 1e6
        y = e["integer"][key]
        pts.append((x, y))
        ax.scatter(x, y, color=cmap(methods.index(e["method"])), marker=MARKERS.get(e["wbits"], "o"), s=60,
                   edgecolor="black", linewidth=0.5, zorder=3)
    if pts:
        front = pareto(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", linewidth=1, zorder=2,
                label="Pareto front")
    for m in methods:
        ax.scatter([], [], color=cmap(methods.index(m)), label=m, edgecolor="black", linewidth=0.5)
    for b in sorted({e["wbits"] for e in rows}, reverse=True):
        ax.scatter([], [], color="white", edgecolor="black", marker=MARKERS.get(b, "o"), label=f"W{b}A{b}")
    fp32 = results["fp32"].get(model, {}).get(key)
    if fp32 is not None:
        ax.axhline(fp32, color="grey", linewidth=0.8, linestyle=":", label="FP32")
    ax.set_xlabel(f"energy per inference on {accel} (µJ)")
    ax.set_ylabel(f"{label}, integer protocol")
    ax.set_title(f"{model}: accuracy vs energy ({accel})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label where no program of the model was priced
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def breakdown(results: dict, model: str, accel: str, bits: int, path: Path) -> bool:
    rows = [e for e in results["entries"] if e["model"] == model and e["wbits"] == bits
            and "energy_j" in e["accel"][accel]]
    if not rows:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    names = [e["method"] for e in rows]
    for ax, field, scale, unit in ((axes[0], "energy_j", 1e6, "energy (µJ)"), (axes[1], "cycles", None, "latency (ms)")):
        bottom = [0.0] * len(rows)
        for c in CLASSES:
            if field == "cycles":
                vals = [e["accel"][accel]["op_classes"]["cycles"].get(c, 0) / (e["accel"][accel]["cycles"] or 1)
                        * e["accel"][accel]["latency_s"] * 1e3 for e in rows]
            else:
                vals = [e["accel"][accel]["op_classes"]["energy_j"].get(c, 0.0) * scale for e in rows]
            if any(vals):
                ax.bar(names, vals, bottom=bottom, color=COLORS[c], label=c, edgecolor="white", linewidth=0.5)
                bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"energy by op class, W{bits}A{bits}")
    axes[1].set_title(f"latency by op class, W{bits}A{bits}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center right", fontsize=8)
    fig.suptitle(f"{model} on {accel}")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def best_entry(results: dict, model: str, bits: int, accel: str) -> dict | None:
    key, _ = METRIC[model]
    rows = [e for e in results["entries"] if e["model"] == model and e["wbits"] == bits
            and "energy_j" in e["accel"][accel]]
    return max(rows, key=lambda e: e["integer"][key]) if rows else None


def per_layer(results: dict, model: str, accel: str, bits: int, path: Path) -> bool:
    best = best_entry(results, model, bits, accel)
    if best is None:
        return False
    layers = best["accel"][accel]["layers"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([l["name"] for l in layers], [l["latency_s"] * 1e3 for l in layers], color="#4c72b0")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("layer")
    ax.set_title(f"{model}: per-layer latency of the best W{bits}A{bits} scheme ({best['method']}) on {accel}")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def synthesis(results: dict, path: Path) -> bool:
    rows = (results.get("synthesis") or {}).get("rows") or []
    if not rows:
        return False
    labels = [f"{r['unit']}\n{r['config']}" for r in rows]
    fields = [f for f in ("luts", "ffs", "dsps", "brams") if any(r.get(f) for r in rows)]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows)), 4.5))
    width = 0.8 / max(len(fields), 1)
    for i, f in enumerate(fields):
        label = {"luts": "LUTs", "ffs": "FFs", "dsps": "DSPs", "brams": "BRAMs"}[f]
        ax.bar([x + i * width for x in range(len(rows))], [r.get(f) or 0 for r in rows], width, label=label)
    ax.set_xticks([x + width * (len(fields) - 1) / 2 for x in range(len(rows))], labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("count (log scale)")
    ax.set_title(f"resources by design ({results['synthesis'].get('target', '')}, yosys)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(results: dict, out: Path) -> list[str]:
    """Every plot the report has data for; returns their file names."""
    written = []
    for model in sorted({e["model"] for e in results["entries"]}):
        for accel in ("edge-int4", "edge-int8"):
            name = f"{model}-accuracy-vs-energy-{accel}.png"
            accuracy_vs_energy(results, model, accel, out / name)
            written.append(name)
        for name, fn in ((f"{model}-breakdown-w4a4-edge-int4.png", breakdown),
                         (f"{model}-per-layer-w4a4-edge-int4.png", per_layer)):
            if fn(results, model, "edge-int4", 4, out / name):
                written.append(name)
    if synthesis(results, out / "synthesis.png"):
        written.append("synthesis.png")
    return written


def sensitivity_bars(result: dict, path: Path) -> None:
    """``ptq2rtl sensitivity``: the metric gained by raising each site (or layer) alone, one bar each."""
    rows = [r for r in result["rows"] if r["kind"] != "-"]
    colors = {"weights": "#4c72b0", "acts": "#dd8452", "layer": "#55a868"}
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.22 * len(rows) + 1.2)))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["gain"] for r in rows], color=[colors[r["kind"]] for r in rows], edgecolor="black", linewidth=0.4)
    ax.set_yticks(y)
    ax.set_yticklabels([r["site"] for r in rows], fontsize=7)
    full = result["rows"][-1]["gain"]
    ax.axvline(full, color="grey", linestyle=":", linewidth=0.8, label=f"uniform W{result['high']}A{result['high']}")
    handles = [Patch(color=colors[k], label=f"{k} at {result['high']} bits") for k in sorted({r["kind"] for r in rows})]
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(f"{result['metric']} gain over uniform W{result['bits']}A{result['bits']} ({result['protocol']} protocol)")
    ax.set_title(f"{result['model']} {result['method']}: sensitivity by {result['by']}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], fontsize=8, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mixed_points(results: list[dict], path: Path) -> None:
    """``ptq2rtl mixed``: each method's uniform schemes and its greedy mixed-precision point, metric against
    the energy of one inference (uniform schemes the accelerator refuses are left out)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(results):
        color = cmap(i % 10)
        uniform = [(name, p) for name, p in r["uniform"].items() if "energy" in p]
        ax.plot([p["energy"] for _, p in uniform], [p["metric"] for _, p in uniform], "o--", color=color,
                markeredgecolor="black", linewidth=0.8, label=f"{r['method']} uniform")
        for name, p in uniform:
            ax.annotate(name, (p["energy"], p["metric"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if "energy" in r["point"]:
            ax.plot([r["point"]["energy"]], [r["point"]["metric"]], "*", color=color, markersize=14,
                    markeredgecolor="black", label=f"{r['method']} greedy MP ({len(r['chosen'])} sites raised)")
        ax.axvline(r["budget_value"], color=color, linestyle=":", linewidth=0.8)
    first = results[0]
    ax.set_xlabel(f"energy per inference on {first['accel']} (µJ); dotted: the budget ({first['budget']})")
    ax.set_ylabel(f"{first['metric']}, integer protocol ({first['n']} samples)")
    ax.set_title(f"{first['model']}: greedy mixed precision from W{first['bits']}A{first['bits']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
