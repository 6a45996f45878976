"""REPORT.md: the report's tables, written from results.json's content."""

from __future__ import annotations

from reports.plots import METRIC, best_entry
from sim.accel import UNIT_PARAMS


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def accuracy_table(results: dict, model: str) -> list[str]:
    key, label = METRIC[model]
    text = key == "cosine"
    fp32 = results["fp32"].get(model, {})
    head = ("| method | bits | paper cosine | paper NN agr. | integer cosine | integer NN agr. | calib (s) |" if text
            else "| method | bits | paper top-1 (%) | integer top-1 (%) | integer top-5 (%) | calib (s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    if not text:
        lines.append(f"| FP32 | 32 | {_fmt(fp32.get('top1'))} | {_fmt(fp32.get('top1'))} | {_fmt(fp32.get('top5'))} | - |")
    for e in results["entries"]:
        if e["model"] != model:
            continue
        p, i = e["paper"], e["integer"]
        bits = f"W{e['wbits']}A{e['abits']}"
        if text:
            lines.append(f"| {e['method']} | {bits} | {_fmt(p['cosine'], '.4f')} | {_fmt(p['nn_agreement'], '.3f')} | "
                         f"{_fmt(i['cosine'], '.4f')} | {_fmt(i['nn_agreement'], '.3f')} | {e['calib_seconds']:.1f} |")
        else:
            lines.append(f"| {e['method']} | {bits} | {_fmt(p['top1'])} | {_fmt(i['top1'])} | {_fmt(i['top5'])} | "
                         f"{e['calib_seconds']:.1f} |")
    return lines


def cost_table(results: dict, model: str) -> list[str]:
    head = ("| method | bits | accelerator | cycles from | latency (ms) | energy (µJ) | utilization (%) | DRAM (kB) | "
            "largest energy consumers |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in results["entries"]:
        if e["model"] != model:
            continue
        for accel, s in e["accel"].items():
            bits = f"W{e['wbits']}A{e['abits']}"
            if "refused" in s:
                why = s["refused"].split(": ", 1)[-1]
                lines.append(f"| {e['method']} | {bits} | {accel} | refused: {why} | | | | | |")
                continue
            largest = ", ".join(f"{x['key']} {100 * x['share']:.0f} %" for x in s["largest_energy"])
            basis = {"schedule": "compiled schedule", "estimate": "analytic estimate"}.get(s.get("basis"), "?")
            lines.append(f"| {e['method']} | {bits} | {accel} | {basis} | {s['latency_s'] * 1e3:.3f} | "
                         f"{s['energy_j'] * 1e6:.1f} | "
                         f"{100 * s['utilization']:.1f} | {s['dram_bytes'] / 1e3:.1f} | {largest} |")
    return lines


def synthesis_table(results: dict) -> list[str]:
    syn = results.get("synthesis") or {}
    rows = syn.get("rows") or []
    if not rows:
        return ["(no synthesis figures)"]
    avail = syn.get("available") or {}
    out = [f"Each unit synthesized alone (yosys, LUT mapping {syn.get('lut_mapping', '?')}) and placed and routed "
           f"on the {syn.get('target')} {syn.get('package', '')} speed {syn.get('speed', '?')} (nextpnr, target "
           f"{_fmt(syn.get('freq_mhz'), 'g')} MHz); MULT18 = MULT18X18D, EBR = DP16KD. The edge configs' 200 MHz "
           "is an assumption (ASIC-style design point), not one of these figures.", "",
           "| unit | config | LUT4 | FF | MULT18 | EBR | Fmax (MHz) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fmax = _fmt(r.get("fmax_mhz"), ".1f") if r.get("fmax_mhz") else (r.get("fmax_note") or "-")
        out.append(f"| {r['unit']} | {r['config']} | {_fmt(r.get('luts'), ',d')} | {_fmt(r.get('ffs'), ',d')} | "
                   f"{_fmt(r.get('dsps'), 'd')} | {_fmt(r.get('brams'), 'd')} | {fmax} |")
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        if len(mine) < len(UNIT_PARAMS):  # a quick report synthesizes one unit: no sum to compare with the part
            continue
        total = {k: sum(r.get(k) or 0 for r in mine) for k in ("luts", "dsps", "brams")}
        over = [k for k in total if avail.get(k) and total[k] > avail[k]]
        fmaxes = [r["fmax_mhz"] for r in mine if r.get("fmax_mhz")]
        verdict = (f"does not fit ({', '.join({'luts': 'LUT4', 'dsps': 'MULT18', 'brams': 'EBR'}[k] for k in over)})"
                   if over else "fits")
        out.append(f"| **sum** | {config} | {total['luts']:,} / {avail.get('luts', 0):,} | | "
                   f"{total['dsps']} / {avail.get('dsps', 0)} | {total['brams']} / {avail.get('brams', 0)} | "
                   f"{_fmt(min(fmaxes), '.1f') if len(fmaxes) == len(mine) else '-'} ({verdict}) |")
    return out


def regression_lines(results: dict) -> list[str]:
    reg = results.get("regression")
    if not reg:
        return ["(no RTL regression run)"]
    from rtl_tests.regress import format_summary

    return ["```", format_summary(reg), "```"]


def report_markdown(results: dict, figures: list[str]) -> str:
    out = ["# ptq2rtl report", "",
           f"Generated by `ptq2rtl report{' --quick' if results['quick'] else ''}` "
           f"({results['generated_seconds']:.0f} s including cached entries). Accuracy under the **paper** protocol "
           "(linear layers and matmuls fake-quantized, LayerNorm / Softmax / GELU / residuals in float) and the "
           "**integer** protocol (the integer program run by the golden engine: every op integer). Cost of one "
           "inference (batch 1; minilm at 128 tokens) on the bundled accelerators.", ""]
    for model in sorted({e["model"] for e in results["entries"]}):
        out += [f"## {model}", "", "### Accuracy", ""] + accuracy_table(results, model) + [""]
        for accel in ("edge-int4", "edge-int8"):
            best = best_entry(results, model, 4, accel)
            if best:
                out.append(f"Best W4A4 scheme on {accel} (integer protocol): **{best['method']}**.")
        out += ["", "### Cost", ""] + cost_table(results, model) + [""]
        for f in figures:
            if f.startswith(model):
                out += [f"![{f}]({f})", ""]
    out += ["## The accelerator units on an FPGA", ""] + synthesis_table(results) + [""]
    if "synthesis.png" in figures:
        out += ["![synthesis](synthesis.png)", ""]
    out += ["## RTL regression (cocotb, against sim.intops)", ""] + regression_lines(results) + [""]
    return "\n".join(out)
