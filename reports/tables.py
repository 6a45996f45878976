"""REPORT.md: the report's tables, written from results.json's content."""

from __future__ import annotations

from reports.plots import METRIC, best_entry


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
        if "refused" in e:
            lines.append(f"| {e['method']} | {bits} | {e['refused']} |" + " |" * (head.count("|") - 4))
        elif text:
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


_RES = (("luts", "lut", "LUT4"), ("ffs", "ff", "FF"), ("dsps", "dsp", "MULT18"), ("brams", "bram", "EBR"))


def _fmax_cell(r: dict) -> str:
    return _fmt(r["fmax_mhz"], ".1f") if r.get("fmax_mhz") else (r.get("fmax_note") or "-")


def _placed(r: dict, key: str, avail: dict, ours: str) -> str:
    """nextpnr's used / available where the design was placed, else yosys' count over the part's."""
    placed = (r.get("placed") or {}).get(key)
    if placed:
        return f"{placed['used']:,} / {placed['available']:,}"
    return f"{r.get(ours) or 0:,} / {avail.get(ours, 0):,} (yosys)"


def synthesis_table(results: dict) -> list[str]:
    syn = results.get("synthesis") or {}
    rows = syn.get("rows") or []
    missing = syn.get("missing")
    gap = [f"Not in the synthesis cache for today's Verilog, so not shown: {missing['config']}'s "
           f"{', '.join(missing['designs'])} (`ptq2rtl report --full` or `ptq2rtl synth --accel {missing['config']} "
           f"--target ecp5 --part 85f --freq {syn.get('freq_mhz', 100):g}` measures them)."] if missing else []
    if not rows:
        return ["(no synthesis figures)", *([""] + gap if gap else [])]
    avail = syn.get("available") or {}
    out = [f"yosys (LUT mapping {syn.get('lut_mapping', '?')}) and nextpnr on the {syn.get('target')} "
           f"{syn.get('package', '')} speed grade {syn.get('speed', '?')}, router target "
           f"{_fmt(syn.get('freq_mhz'), 'g')} MHz; MULT18 = MULT18X18D, EBR = DP16KD. A design is placed inside "
           "a three-pin wrapper (its ports from a shift register, its outputs XOR-reduced), so Fmax is register "
           "to register.", ""]
    config = syn.get("fpga_config") or next((r["config"] for r in rows if r["unit"] == "accelerator"), None)
    fpga = [r for r in rows if r["config"] == config]
    if fpga:
        clock = syn.get("clock") or {}
        whole = any(r["unit"] == "accelerator" for r in fpga)
        out += [f"### {config}: {'the whole accelerator and its units' if whole else 'its units'}", "",
                "| design | " + " | ".join(f"{name} used / available" for _, _, name in _RES) + " | Fmax (MHz) |",
                "|---|" + "---:|" * (len(_RES) + 1)]
        for r in fpga:
            cells = " | ".join(_placed(r, key, avail, ours) for ours, key, _ in _RES)
            out.append(f"| {'**accelerator**' if r['unit'] == 'accelerator' else r['unit']} | {cells} | "
                       f"{_fmax_cell(r)} |")
        if clock:
            out += ["", f"Configured clock {clock['mhz']:g} MHz: {clock['note']}."]
        out += [""] + throughput_lines(results, config)
    if gap:
        out += [""] + gap
    edge = [r for r in rows if r["config"] != config]
    if edge:
        out += ["", "### Units of the edge configs on the same part", "",
                "The edge configs are ASIC-style design points (their 200 MHz is an assumption, their buffers are "
                "sized for SRAM), so only their units are placed, each alone, to compare: the int4 and the int8 "
                "array, the dyadic and the power-of-two requantizer.", "",
                "| unit | config | LUT4 | FF | MULT18 | EBR | Fmax (MHz) |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in edge:
            out.append(f"| {r['unit']} | {r['config']} | {_fmt(r.get('luts'), ',d')} | {_fmt(r.get('ffs'), ',d')} | "
                       f"{_fmt(r.get('dsps'), 'd')} | {_fmt(r.get('brams'), 'd')} | {_fmax_cell(r)} |")
    return out


def throughput_lines(results: dict, accel: str) -> list[str]:
    """GOPS at the configured clock and GOPS/W from the energy model, per model's baseline W4A4 program."""
    lines = []
    for e in results["entries"]:
        s = e["accel"].get(accel) or {}
        if e["method"] != "baseline" or e["wbits"] != 4 or "gops" not in s:
            continue
        lines.append(f"- {e['model']} baseline W4A4 on {accel} at {s['clock_mhz']:g} MHz: "
                     f"{s['latency_s'] * 1e3:.3f} ms, {s['gops']:.3g} GOPS of {s['peak_gops']:.3g} peak, "
                     f"{s['gops_per_w']:.3g} GOPS/W ({s['energy_preset']} energy model: 45 nm ASIC actions, "
                     "not FPGA power)")
    return lines


def regression_lines(results: dict) -> list[str]:
    reg = results.get("regression")
    if not reg:
        return ["(no RTL regression run)"]
    from rtl_tests.regress import format_summary

    return ["```", format_summary(reg), "```"]


#: what each selection is called in the report's first lines, and the command that runs it
SELECTION_NAMES = {"default": ("the default (representative) selection", "ptq2rtl report"),
                   "full": ("the full selection", "ptq2rtl report --full"),
                   "quick": ("the quick selection (what the tests run)", "ptq2rtl report --quick")}


def selection_lines(results: dict) -> list[str]:
    """Which run wrote the report: what it covers, what it leaves to ``--full``, and where its time went."""
    sel = results["selection"]
    name, command = SELECTION_NAMES[sel["name"]]
    samples = {}
    for e in results["entries"]:
        if "n" in e["integer"]:
            samples.setdefault(e["model"], e["integer"]["n"])
    unit = {"vit-digits": "test images", "minilm": "sentences"}
    evaluated = "; ".join(f"{m} on {'its first ' if sel['limits'].get(m) else ''}{n:,} {unit.get(m, 'samples')}"
                          for m, n in samples.items())
    widths = ", ".join(f"W{b}A{b}" for b in sel["bits"])
    synth = {"cached": "the FPGA config's synthesis figures as hw.synth's cache or the shipped records hold them "
                       "(no tool runs)",
             "measured": "every design synthesized, placed and routed where the cache has no figures",
             "quick": "one unit synthesized without place and route"}[sel["synthesis"]]
    reg = results.get("regression")
    regression = (f"the RTL regression on {reg['sim']}" + (", each unit's first bench configuration"
                  if reg.get("configs") == 1 else f", each unit's first {reg['configs']} bench configurations"
                  if reg.get("configs") else ", every bench configuration")
                  + ("" if any(r["kind"] == "trace" for u in reg["units"].values() for r in u["runs"])
                     else ", no program traces")) if reg else "no RTL regression"
    secs = results.get("seconds") or {}
    computed = results.get("computed") or {}
    beside = [f"{k} {secs[k]:.0f} s" for k in ("synthesis", "regression") if k in secs]
    took = (f"{secs.get('total', results['generated_seconds']):.0f} s: entries {secs.get('entries', 0):.0f} s "
            f"({computed.get('programs', 0)} programs and {computed.get('points', 0)} priced points computed, "
            f"{results.get('where', '?')}; the rest from the cache)"
            + (f"; beside them {', '.join(beside)}" if beside else ""))
    lines = [f"Generated by `{command}`, {name}: methods {', '.join(sel['methods'])} at {widths}; {evaluated}; "
             f"{synth}; {regression}. It took {took}."]
    if sel["name"] != "full":
        from reports.report import select

        full = select("full")
        lines += ["", f"`ptq2rtl report --full` runs every method at {', '.join(f'W{b}A{b}' for b in full.bits)} "
                      "with every model on its whole evaluation set, synthesizes, places and routes every design "
                      "missing from the cache (the edge configs' units included) and runs the whole Icarus "
                      "regression with every program trace."]
    return lines


def report_markdown(results: dict, figures: list[str]) -> str:
    out = ["# ptq2rtl report", "", *selection_lines(results), "",
           "Accuracy under the **paper** protocol "
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
    out += ["## The accelerator on an FPGA", ""] + synthesis_table(results) + [""]
    if "synthesis.png" in figures:
        out += ["![synthesis](synthesis.png)", ""]
    out += ["## RTL regression (cocotb, against sim.intops)", ""] + regression_lines(results) + [""]
    return "\n".join(out)
