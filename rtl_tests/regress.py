"""The RTL regression as one call: every unit's benches on one simulator, and a summary.

``run(sim)`` runs each unit in each of its bench configurations
(``rtl_tests.units.CONFIGS``: seeded random and corner vectors) and, with
``traces``, every program trace in ``rtl_tests/data/traces`` on a unit sized
for it. It returns a summary dict: per unit the vectors checked (by source),
mismatches with the first few in full, and the cycle counts measured against
``sim.timing``; overall totals and the wall time. ``ok`` is true when there
are no mismatches and every cycle count agrees.
"""

from __future__ import annotations

import time

from rtl_tests import harness, traces, units

CYCLE_EXAMPLES = 3  #: measured-vs-model cycle counts kept per bench run in the summary


def _fold(into: dict, s: dict, label: str) -> None:
    into["vectors"] += s["vectors"]
    into["mismatches"] += s["mismatches"]
    for src, n in s["sources"].items():
        into["sources"][src] = into["sources"].get(src, 0) + n
    into["mismatch_details"] += s["mismatch_details"][: max(0, 5 - len(into["mismatch_details"]))]
    bad = [c for c in s["cycles"] if c["measured"] != c["model"]]
    into["cycle_checks"] += len(s["cycles"])
    into["cycle_mismatches"] += len(bad)
    into["runs"].append({"bench": label, "params": s["params"], "vectors": s["vectors"],
                         "mismatches": s["mismatches"], "cycle_checks": len(s["cycles"]),
                         "cycles": (bad or s["cycles"])[:CYCLE_EXAMPLES]})


def run(sim: str = "icarus", unit_names: list[str] | None = None, with_traces: bool = True,
        progress=None) -> dict:
    """Run the regression on ``sim`` ("icarus" or "verilator"); ``progress(label)`` is called before each bench."""
    start = time.perf_counter()
    names = unit_names or list(units.UNITS)
    unknown = sorted(set(names) - set(units.UNITS))
    if unknown:
        raise ValueError(f"unknown unit {unknown[0]!r} (accepted: {', '.join(units.UNITS)})")
    summary = {"sim": sim, "units": {}}
    for unit in names:
        u = {"vectors": 0, "mismatches": 0, "sources": {}, "mismatch_details": [], "cycle_checks": 0,
             "cycle_mismatches": 0, "runs": []}
        for config in units.CONFIGS[unit]:
            if progress:
                progress(f"{unit} {config}")
            _fold(u, units.run_config(unit, config, sim), config)
        for path in traces.files(unit) if with_traces else []:
            if progress:
                progress(f"{unit} trace {path.parent.name}")
            _fold(u, units.run_trace(unit, path, sim), f"trace {path.parent.name}")
        summary["units"][unit] = u
    summary["vectors"] = sum(u["vectors"] for u in summary["units"].values())
    summary["mismatches"] = sum(u["mismatches"] for u in summary["units"].values())
    summary["cycle_checks"] = sum(u["cycle_checks"] for u in summary["units"].values())
    summary["cycle_mismatches"] = sum(u["cycle_mismatches"] for u in summary["units"].values())
    summary["ok"] = summary["mismatches"] == 0 and summary["cycle_mismatches"] == 0
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def format_summary(s: dict) -> str:
    """A plain-text table of a summary, one line per unit, then the first problems if any."""
    lines = [f"RTL regression on {s['sim']}: {s['vectors']} vectors, {s['mismatches']} mismatches, "
             f"{s['cycle_checks'] - s['cycle_mismatches']}/{s['cycle_checks']} cycle counts equal to sim.timing "
             f"({s['seconds']} s)",
             f"{'unit':<10} {'vectors':>8} {'random':>8} {'corner':>7} {'traces':>7} {'mism.':>6} {'cycles ok':>10}"]
    for name, u in s["units"].items():
        src = u["sources"]
        trace_n = sum(n for k, n in src.items() if k.startswith("trace:"))
        lines.append(f"{name:<10} {u['vectors']:>8} {src.get('random', 0):>8} {src.get('corner', 0):>7} "
                     f"{trace_n:>7} {u['mismatches']:>6} {u['cycle_checks'] - u['cycle_mismatches']:>5}/"
                     f"{u['cycle_checks']:<4}")
        for r in u["runs"]:
            c = r["cycles"][0] if r["cycles"] else None
            if c:
                lines.append(f"  {r['bench']:<40} e.g. {c['what']}: measured {c['measured']}, model {c['model']}")
    for name, u in s["units"].items():
        for d in u["mismatch_details"]:
            lines.append(f"MISMATCH {name} op={d['op']} inputs={d['inputs']} expected={d['expected']} got={d['got']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="RTL vs golden model regression")
    ap.add_argument("--sim", default="icarus", choices=("icarus", "verilator"))
    ap.add_argument("--unit", action="append", choices=list(units.UNITS))
    ap.add_argument("--no-traces", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    s = run(args.sim, args.unit, not args.no_traces,
            progress=None if args.json else (lambda label: print(f"… {label}", file=sys.stderr, flush=True)))
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
