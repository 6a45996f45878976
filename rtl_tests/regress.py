"""The RTL regression as one call: every unit's benches on one simulator, and a summary.

``run(sim)`` runs each unit in each of its bench configurations
(``rtl_tests.units.CONFIGS``: small sizes, seeded random and corner vectors),
at the sizes the bundled accelerator descriptions export
(``rtl_tests.units.EXPORTED``: what ``ptq2rtl verilog --accel NAME`` builds,
by default on Verilator only; the default run leaves ``units.FULL_ONLY`` out,
``full`` runs it too) and, with ``traces``, every program trace in
``rtl_tests/data/traces`` on a unit sized for it. It returns a summary dict:
per unit the vectors checked (by source), mismatches with the first few in
full, and the cycle counts measured against ``sim.timing``; per bench run its
size, vectors, cycle checks and seconds (Verilog, simulator build, run);
overall totals and the wall time. ``ok`` is true when there are no mismatches
and every cycle count agrees.
"""

from __future__ import annotations

import time

from rtl_tests import traces, units

CYCLE_EXAMPLES = 3  #: measured-vs-model cycle counts kept per bench run in the summary: disagreements, else the longest


def _fold(into: dict, s: dict, label: str, unit: str, kind: str) -> None:
    into["vectors"] += s["vectors"]
    into["mismatches"] += s["mismatches"]
    for src, n in s["sources"].items():
        into["sources"][src] = into["sources"].get(src, 0) + n
    into["mismatch_details"] += s["mismatch_details"][: max(0, 5 - len(into["mismatch_details"]))]
    bad = [c for c in s["cycles"] if c["measured"] != c["model"]]
    into["cycle_checks"] += len(s["cycles"])
    into["cycle_mismatches"] += len(bad)
    into["runs"].append({"bench": label, "kind": kind, "size": units.size(unit, s["params"]), "params": s["params"],
                         "vectors": s["vectors"], "mismatches": s["mismatches"], "cycle_checks": len(s["cycles"]),
                         "cycle_mismatches": len(bad),
                         "cycles": (bad or sorted(s["cycles"], key=lambda c: -c["model"]))[:CYCLE_EXAMPLES],
                         "seconds": s.get("seconds", {})})


def run(sim: str = "icarus", unit_names: list[str] | None = None, with_traces: bool = True,
        progress=None, exported: bool | None = None, full: bool | None = None, configs: int | None = None) -> dict:
    """Run the regression on ``sim`` ("icarus" or "verilator"); ``progress(label)`` is called before each bench.

    ``exported``: also the exported sizes (default: on Verilator); ``full``: all of them, ``units.FULL_ONLY``
    included (default: ``PTQ2RTL_FULL=1`` in the environment); ``configs``: each unit's first ``configs`` bench
    configurations only (default: all of them; ``ptq2rtl report``'s slice takes one)."""
    start = time.perf_counter()
    names = unit_names or list(units.UNITS)
    unknown = sorted(set(names) - set(units.UNITS))
    if unknown:
        raise ValueError(f"unknown unit {unknown[0]!r} (accepted: {', '.join(units.UNITS)})")
    exported = sim == "verilator" if exported is None else exported
    full = units.full_default() if full is None else full
    summary = {"sim": sim, "exported": "full" if exported and full else "default" if exported else "none",
               "configs": configs, "units": {}}
    for unit in names:
        u = {"vectors": 0, "mismatches": 0, "sources": {}, "mismatch_details": [], "cycle_checks": 0,
             "cycle_mismatches": 0, "runs": []}
        benches = [(config, "bench") for config in list(units.CONFIGS[unit])[:configs]]
        benches += [(config, "exported") for config in units.exported(unit, full)] if exported else []
        for config, kind in benches:
            label = f"{'exported ' if kind == 'exported' else ''}{config}"
            if progress:
                progress(f"{unit} {label}")
            _fold(u, units.run_config(unit, config, sim), label, unit, kind)
        for path in traces.files(unit) if with_traces else []:
            if progress:
                progress(f"{unit} trace {path.parent.name}")
            _fold(u, units.run_trace(unit, path, sim), f"trace {path.parent.name}", unit, "trace")
        summary["units"][unit] = u
    summary["vectors"] = sum(u["vectors"] for u in summary["units"].values())
    summary["mismatches"] = sum(u["mismatches"] for u in summary["units"].values())
    summary["cycle_checks"] = sum(u["cycle_checks"] for u in summary["units"].values())
    summary["cycle_mismatches"] = sum(u["cycle_mismatches"] for u in summary["units"].values())
    summary["ok"] = summary["mismatches"] == 0 and summary["cycle_mismatches"] == 0
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def format_summary(s: dict) -> str:
    """A plain-text table of a summary, one line per unit, then one per bench run (its size, vectors, cycle
    counts and seconds), then the first problems if any."""
    exported = {"full": "exported sizes: all", "default": "exported sizes: the default slice",
                "none": "exported sizes: none"}.get(s.get("exported"), "")
    n = s.get("configs")
    benches = f"; each unit's first {f'{n} bench configurations' if n > 1 else 'bench configuration'}" if n else ""
    lines = [f"RTL regression on {s['sim']}: {s['vectors']} vectors, {s['mismatches']} mismatches, "
             f"{s['cycle_checks'] - s['cycle_mismatches']}/{s['cycle_checks']} cycle counts equal to sim.timing "
             f"({s['seconds']} s{'; ' + exported if exported else ''}{benches})",
             f"{'unit':<10} {'vectors':>8} {'random':>8} {'corner':>7} {'traces':>7} {'mism.':>6} {'cycles ok':>10}"]
    for name, u in s["units"].items():
        src = u["sources"]
        trace_n = sum(n for k, n in src.items() if k.startswith("trace:"))
        lines.append(f"{name:<10} {u['vectors']:>8} {src.get('random', 0):>8} {src.get('corner', 0):>7} "
                     f"{trace_n:>7} {u['mismatches']:>6} {u['cycle_checks'] - u['cycle_mismatches']:>5}/"
                     f"{u['cycle_checks']:<4}")
    for name, u in s["units"].items():
        lines.append(f"{name}:")
        for r in u["runs"]:
            t = r.get("seconds") or {}
            secs = f"; {t['verilog']} + {t['build']} + {t['run']} s" if t else ""
            c = r["cycles"][0] if r["cycles"] else None
            example = f"; e.g. {c['what']}: measured {c['measured']}, model {c['model']}" if c else ""
            ok = r["cycle_checks"] - r.get("cycle_mismatches", 0)
            lines.append(f"  {r['bench']:<40} {r.get('size', '')}")
            lines.append(f"  {'':<40} {r['vectors']} vectors, {r['mismatches']} mismatches, {ok}/{r['cycle_checks']}"
                         f" cycle counts{example}{secs}")
    for name, u in s["units"].items():
        for d in u["mismatch_details"]:
            lines.append(f"MISMATCH {name} op={d['op']} inputs={d['inputs']} expected={d['expected']} got={d['got']}")
    if any(r.get("seconds") for u in s["units"].values() for r in u["runs"]):
        lines.append("(seconds: Verilog + simulator build + bench run; a cached build takes ~0 s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="RTL vs golden model regression")
    ap.add_argument("--sim", default="icarus", choices=("icarus", "verilator"))
    ap.add_argument("--unit", action="append", choices=list(units.UNITS))
    ap.add_argument("--no-traces", action="store_true")
    ap.add_argument("--exported", action=argparse.BooleanOptionalAction, default=None,
                    help="the sizes the bundled accelerator descriptions export (default: on Verilator)")
    ap.add_argument("--full", action="store_true", default=None,
                    help=f"every exported size ({units.FULL_ENV}=1 does the same)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    s = run(args.sim, args.unit, not args.no_traces,
            progress=None if args.json else (lambda label: print(f"… {label}", file=sys.stderr, flush=True)),
            exported=args.exported, full=args.full)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
