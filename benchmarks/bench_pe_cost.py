"""What the MAC array's processing elements cost on ECP5: LUT4, CCU2C, FF and MULT18 per array and per PE.

The flow of ``hw/synth.py`` (Debian yosys 0.23 with ABC, ``synth_ecp5``, DSP
inference on), on the array at a few sizes and modes: int4 and int8 operands,
4x4 and the accelerators' 16x16 (``MacArray.from_accel``), with and without
the log2 attention datapath (``log2``: ``matmul_log2``, P x V by shifts).
Per PE is the whole unit divided by rows x cols: the accumulator buffer, its
adders and the skew registers are in it. An ECP5 CCU2C (two bits of a carry
chain) takes the place of two LUT4, so "LUT4 + 2 CCU2C" is the slice-level
figure. Results come from the synthesis cache when nothing changed.

    python benchmarks/bench_pe_cost.py [--only int4-4x4 edge-int4 ...] [--fmax edge-int4] [--json]
"""

from __future__ import annotations

import argparse
import json

from hw import synth
from hw.mac_array import MacArray
from sim.accel import load_accel

SMALL = dict(max_m=32)
#: name -> (MacArray arguments, where they come from)
VARIANTS = {
    "int4-4x4": dict(rows=4, cols=4, act_bits=4, weight_bits=4, log2=False, **SMALL),
    "int4-4x4-log2": dict(rows=4, cols=4, act_bits=4, weight_bits=4, log2=True, **SMALL),
    "int8-4x4": dict(rows=4, cols=4, act_bits=8, weight_bits=8, log2=False, **SMALL),
    "int8-4x4-log2": dict(rows=4, cols=4, act_bits=8, weight_bits=8, log2=True, **SMALL),
    "edge-int4": ("edge-int4", dict(log2=False)),
    "edge-int4-log2": ("edge-int4", dict(log2=True)),
    "edge-int8": ("edge-int8", dict(log2=False)),
}


def params_of(spec) -> tuple[dict, float]:
    """The array's constructor arguments and the place-and-route target clock (the accelerator's, else 100 MHz)."""
    if isinstance(spec, dict):
        return spec, synth.DEFAULT_FREQ_MHZ
    name, overrides = spec
    accel = load_accel(name)
    arr = MacArray.from_accel(accel, **overrides)
    arr._MustUse__silence = True  # built to read its parameters; synth builds its own
    return arr.params, float(accel.clock_mhz)


def measure(name: str, fmax: bool) -> dict:
    params, freq = params_of(VARIANTS[name])
    res = synth.synth({"mac_array": params}, target="ecp5", fmax=fmax, freq_mhz=freq)
    row = res["units"]["mac_array"]
    pes = params["rows"] * params["cols"]
    return {"variant": name, "params": row["params"], "abc": res["abc"], "yosys": res["tools"]["yosys"],
            "pes": pes, "lut": row["lut"], "carry": row["carry"], "mux": row["mux"], "ff": row["ff"],
            "dsp": row["dsp"], "bram": row["bram"], "lut_per_pe": row["lut"] / pes,
            "slice_lut_per_pe": (row["lut"] + 2 * row["carry"]) / pes, "dsp_per_pe": row["dsp"] / pes,
            "fmax_mhz": row.get("fmax_mhz"), "fmax_note": row.get("fmax_note"),
            "seconds": "cached" if row.get("cached") else sum(row["seconds"].values())}


def table(rows: list[dict]) -> str:
    head = (f"{'variant':<15} {'PEs':>4} {'LUT4':>7} {'CCU2C':>6} {'FF':>6} {'MULT18':>6} {'EBR':>4} "
            f"{'LUT4/PE':>8} {'+2CCU2C/PE':>10} {'MULT18/PE':>9}  {'Fmax':>10}  seconds")
    lines = [head]
    for r in rows:
        fmax = f"{r['fmax_mhz']:.1f} MHz" if r["fmax_mhz"] else "-"
        took = r["seconds"] if isinstance(r["seconds"], str) else f"{r['seconds']:.0f}"
        lines.append(f"{r['variant']:<15} {r['pes']:>4} {r['lut']:>7,} {r['carry']:>6,} {r['ff']:>6,} {r['dsp']:>6} "
                     f"{r['bram']:>4} {r['lut_per_pe']:>8.1f} {r['slice_lut_per_pe']:>10.1f} "
                     f"{r['dsp_per_pe']:>9.2f}  {fmax:>10}  {took}")
        if r["fmax_mhz"] is None and r["fmax_note"] and "not asked" not in r["fmax_note"]:
            lines.append(f"{'':<15} {r['fmax_note']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="these variants (default: all)")
    ap.add_argument("--fmax", nargs="+", choices=sorted(VARIANTS), default=[],
                    help="also place and route these variants on LFE5U-85F speed 6 (nextpnr-ecp5)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = args.only or list(VARIANTS)
    rows = []
    for name in names:
        rows.append(measure(name, name in args.fmax))
        if not args.json:
            print(f"done: {name}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    r0 = rows[0]
    print(f"MacArray on ECP5 (synth_ecp5, {r0['yosys']}, {'with ABC' if r0['abc'] else 'WITHOUT ABC'}); "
          "per PE = whole unit / (rows x cols)")
    print(table(rows))


if __name__ == "__main__":
    main()
