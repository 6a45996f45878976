"""The ``ptq2rtl`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

from ptq2rtl.errors import UsageError, user_errors


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), raised for :func:`main` to report."""

    def error(self, message: str):
        raise UsageError(message)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _writable(path: Path, text: str) -> None:
    """The nearest existing folder above ``path`` must be a folder, so that ``path`` can be created."""
    above = next(p for p in path.absolute().parents if p.exists())
    if not above.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {above} is a file, not a folder")


def output_file(text: str) -> str:
    """An argparse type: the path of a file to write (not an existing folder)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the path of the file to write")
    _writable(path, text)
    return text


def output_dir(text: str) -> str:
    """An argparse type: a folder to write into (created if missing; not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder to write into")
    _writable(path, text)
    return text


def accelerator(text: str):
    """An argparse type: a bundled accelerator name or a YAML file, loaded and validated (``sim.accel``)."""
    from sim.accel import AccelError, load_accel

    try:
        return load_accel(text)
    except AccelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except UnicodeDecodeError as exc:  # load_accel reads the file as UTF-8 text
        raise argparse.ArgumentTypeError(f"{text}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: cannot be read ({exc.strerror})") from None


def unit_of(module: str, names: str = "UNITS"):
    """An argparse type: a unit name of ``module``'s ``names`` (imported only when the option is given)."""

    def unit(text: str) -> str:
        names_ = getattr(importlib.import_module(module), names)
        if text not in names_:
            raise argparse.ArgumentTypeError(f"unknown unit {text!r} (accepted: {', '.join(names_)})")
        return text

    return unit


def _print(result, as_json: bool, table=None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif table is not None:
        print(table(result))
    else:
        for k, v in result.items():
            print(f"{k:>28s}  {v:.4f}" if isinstance(v, float) else f"{k:>28s}  {v}")


def _bits(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",") if b]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not bits:
        raise argparse.ArgumentTypeError("expected at least one width, e.g. 8,6,4")
    return bits


def cmd_models(args) -> None:
    from ptq2rtl import models

    rows = [m.__dict__ for m in models.list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for m in rows:
        print(f"{m['name']:32s} {m['family']:5s} {m['task']:5s}  {m['description']}")


def cmd_train(args) -> None:
    from ptq2rtl import bibert, cnn_digits, models, vit_digits

    trainers = {"vit-digits": (vit_digits.train_vit_digits, vit_digits.CHECKPOINT),
                "cnn-digits": (cnn_digits.train_cnn_digits, cnn_digits.CHECKPOINT),
                "bibert-minilm": (bibert.train_bibert, None)}  # None: the cache, where quantize looks for it
    if args.model not in trainers:
        raise models.ModelError(f"only {', '.join(trainers)} are trained by ptq2rtl; {args.model!r} loads "
                                f"from a checkpoint")
    train, checkpoint = trainers[args.model]
    _print(train(args.output or (checkpoint and str(checkpoint)), progress=True), args.json)


def cmd_quantize(args) -> None:
    from ptq2rtl import flows

    program, plan = flows.quantize(args.model, args.method, args.wbits, args.abits, checkpoint=args.checkpoint,
                                   data=args.data, calib=args.calib)
    program.save(args.output)
    print(f"wrote {args.output}: {len(program.ops)} ops, method {args.method}, "
          f"W{program.meta.get('wbits', args.wbits)}A{program.meta.get('abits', args.abits)}, "
          f"calibration {plan.meta['calib_seconds']:.1f} s")


def _check_runs(program, accel) -> None:
    """``eval --accel``: refuse a program ``accel`` cannot run (``sim.accel.check_program``, as simulate does),
    text programs at the longest token count an evaluation batch pads to."""
    from ptq2rtl.models.data import TEXT_MAX_LENGTH
    from sim.accel import check_program

    if accel is not None:
        check_program(program, accel, seq_len=TEXT_MAX_LENGTH)


def cmd_eval(args) -> None:
    from ptq2rtl import flows, models
    from sim.program import IntegerProgram

    if Path(args.target).suffix == ".safetensors" or Path(args.target).is_file():
        program = IntegerProgram.load(args.target)
        _check_runs(program, args.accel)
        result = flows.evaluate_program(program, data=args.data, limit=args.limit)
    elif args.fp32:
        if args.accel is not None:
            raise UsageError("eval --accel checks a quantized program; --fp32 has none")
        result = models.fp32_eval(args.target, checkpoint=args.checkpoint, data=args.data, limit=args.limit)
    else:
        if not args.method:
            raise UsageError("eval MODEL needs --fp32 or --method (or pass a program file)")
        plan = flows.make_plan(args.target, args.method, args.wbits, args.abits, checkpoint=args.checkpoint,
                               data=args.data, calib=args.calib)
        if args.accel is not None:
            _check_runs(flows.lower_plan(plan), args.accel)
        if args.protocol == "paper":
            result = flows.evaluate_paper(plan, data=args.data, limit=args.limit)
        else:
            result = flows.evaluate_program(flows.lower_plan(plan), data=args.data, limit=args.limit)
        result["calib_seconds"] = plan.meta["calib_seconds"]
    _print(result, args.json)


def cmd_simulate(args) -> None:
    from ptq2rtl.simulate import format_table, simulate_report

    report = simulate_report(args.program, args.accel, batch=args.batch, seq_len=args.seq_len)
    if report["clock"]["warning"]:
        print(f"warning: {report['clock']['warning']}", file=sys.stderr)
    report["activation"] = _activation_traffic(args)
    _print(report, args.json, format_table)
    if not args.json:
        a = report["activation"]
        print(f"activations ({a['basis']}): {a['stored_bytes']:,} bytes stored, {a['bits_per_value']:.2f} bits a "
              f"value, {a['dram_bytes']:,} bytes to and from DRAM")


def _activation_traffic(args) -> dict:
    """What the program stores of its activations and moves of them to DRAM (``sim.cycles.ActivationTraffic``,
    from the analytic model whichever basis priced the cycles)."""
    from sim.cycles import program_cycles
    from sim.program import IntegerProgram

    act = program_cycles(IntegerProgram.load(args.program), args.accel, batch=args.batch,
                         seq_len=args.seq_len).activation
    return {"stored_bytes": act.stored_bytes, "values": act.values, "bits_per_value": act.bits_per_value,
            "dram_bytes": act.dram_bytes, "basis": "analytic model (sim.cycles)"}


def _sweep_cols(row: dict) -> tuple[str, ...]:
    text = "cosine" in (row.get("paper") or row.get("integer") or {})
    return ("cosine", "nn_agreement") if text else ("top1",)


def sweep_header(row: dict) -> str:
    head = f"{'method':10s} {'bits':>5s} " + " ".join(f"{p + ' ' + c:>20s}" for p in ("paper", "integer")
                                                      for c in _sweep_cols(row))
    return f"{row['model']}\n{head} {'calib s':>8s}\n" + "-" * (len(head) + 9)


def sweep_line(r: dict) -> str:
    vals = []
    for p in ("paper", "integer"):
        for c in _sweep_cols(r):
            v = (r.get(p) or {}).get(c)
            vals.append(f"{v:20.4f}" if v is not None else f"{'-':>20s}")
    line = f"{r['method']:10s} {'W%dA%d' % (r['wbits'], r['abits']):>5s} " + " ".join(vals) + f" {r['calib_seconds']:8.1f}"
    return line + (f"  ({r['refused']})" if "refused" in r else "")


def cmd_sweep(args) -> None:
    from ptq2rtl import flows

    methods = args.methods.split(",") if args.methods else flows.default_methods(args.model)
    protocols = ("paper", "integer") if args.protocol == "both" else (args.protocol,)
    rows = []
    for row in flows.sweep(args.model, methods, args.bits, protocols=protocols, checkpoint=args.checkpoint,
                           data=args.data, limit=args.limit, calib=args.calib):
        if not args.json:  # print each row as soon as it is measured
            print((sweep_header(row) + "\n" if not rows else "") + sweep_line(row), flush=True)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))


def cmd_sensitivity(args) -> None:
    from ptq2rtl import sensitivity

    result = sensitivity.run(args.model, args.method, args.bits, high=args.high, by=args.by, protocol=args.protocol,
                             limit=args.limit, checkpoint=args.checkpoint, data=args.data)
    if args.plot:
        from reports.plots import sensitivity_bars

        sensitivity_bars(result, Path(args.plot))
    _print(result, args.json, sensitivity.format_table)
    if args.plot and not args.json:
        print(f"wrote {args.plot}")


def cmd_mixed(args) -> None:
    from ptq2rtl import mixed

    budget = mixed.Budget.parse(args.budget)
    results = []
    for method in args.method.split(","):
        results.append(mixed.greedy(args.model, method, args.bits, budget, accel=args.accel, high=args.high,
                                    by=args.by, limit=args.limit, checkpoint=args.checkpoint, data=args.data))
        if not args.json:  # each method's table as soon as it is measured
            print(mixed.format_table(results[-1]) + "\n", flush=True)
    if args.plot:
        from reports.plots import mixed_points

        mixed_points(results, Path(args.plot))
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    elif args.plot:
        print(f"wrote {args.plot}")


def cmd_compress(args) -> None:
    from ptq2rtl import compress

    if args.table:
        if args.distill or args.prune or args.recover or args.method or args.output:
            raise UsageError("compress --table runs its own combinations; leave out --distill, --prune, --recover, "
                             "--method and -o")
        if not args.json:
            print(compress.HEADER, flush=True)
        rows = compress.table(args.model, limit=args.limit, accel=args.accel,
                              on_row=None if args.json else lambda r: print(compress.format_row(r), flush=True))
        _print(rows, args.json, compress.format_table)
        return
    wbits, abits = compress.parse_bits(args.bits)
    combo = compress.Combination(
        distill=compress.parse_distill(args.distill) if args.distill is not None else None,
        prune=compress.parse_prune(args.prune or ""),
        recover=compress.parse_recover(args.recover) if args.recover is not None else None,
        method=args.method, wbits=wbits, abits=abits)
    row = compress.run(args.model, combo, limit=args.limit, accel=args.accel, output=args.output)
    _print(row, args.json, lambda r: compress.format_table([r]))
    if args.output and not args.json:
        print(f"wrote {args.output}")


def cmd_verilog(args) -> None:
    from hw.verilog import export

    if not args.no_lint:
        from hw import toolchain

        toolchain.setup_verilator()  # a missing Verilator is refused before anything is written
    out = Path(args.output)
    created = not out.exists()
    try:
        manifest = export(args.accel, out, lint_files=not args.no_lint, whole=not args.units_only)
    except BaseException:  # e.g. a unit parameter out of range: leave no folder behind
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if args.json:
        print(json.dumps(manifest, indent=2))
        return
    top = manifest.get("top")
    print(f"wrote {'the accelerator and ' if top else ''}{len(manifest['units'])} units for "
          f"{manifest['accelerator']} into {args.output} (+ manifest.json)")
    for e in ([top] if top else []) + list(manifest["units"].values()):
        lint = e.get("lint")
        status = "" if lint is None else ("lint ok" if lint["ok"] else "LINT FAILED") + (
            f" (waived: {', '.join(lint['warnings'])})" if lint and lint["warnings"] else "")
        timing = f"latency {e['latency']}" if "latency" in e else "cycles: sim.isa.instr_cycles"
        print(f"  {e['file']:<18s} {e['class']:<12s} {timing}  {status}")


def cmd_synth(args) -> None:
    from hw import synth
    from sim.accel import FPGA_TARGETS

    target, part = args.target, args.part
    if target is None:  # the config's own FPGA part, else the LFE5U-85F
        own = args.accel.target if args.accel.target in FPGA_TARGETS else "ecp5-85f"
        target, part = FPGA_TARGETS[own][0], part or own.split("-")[1]
    result = synth.synth(args.accel, target, units=args.unit, fmax=not args.no_fmax,
                         dsp=not args.no_dsp, part=part, freq_mhz=args.freq, cache=not args.no_cache,
                         pnr_timeout_s=args.pnr_timeout, workdir=args.workdir)
    if not args.no_fmax:
        from ptq2rtl import clocks

        clocks.record(args.accel, result)  # simulate checks the config's clock against it
    _print(result, args.json, synth.format_table)


def cmd_regress(args) -> None:
    from hw import toolchain
    from rtl_tests import regress

    if args.programs and args.sim != "verilator":
        raise UsageError("regress --programs runs the whole accelerator, on Verilator only (--sim verilator)")
    toolchain.setup_simulator(args.sim)  # a missing simulator is one line, before the first bench
    progress = None if args.json else (lambda label: print(f"... {label}", file=sys.stderr))
    summary = regress.run(args.sim, args.unit, not args.no_traces, progress=progress, full=args.full or None)
    table = regress.format_summary
    if args.programs:
        from ptq2rtl.rtl_run import format_summary, regress_programs

        summary["programs"] = regress_programs(full=args.full, sim=args.sim, progress=progress)
        summary["ok"] = summary["ok"] and all(r["ok"] for r in summary["programs"])
        table = lambda s: "\n\n".join([regress.format_summary(s)] + [format_summary(r) for r in s["programs"]])
    _print(summary, args.json, table)
    if not summary["ok"]:
        raise SystemExit(1)


def cmd_rtl_run(args) -> None:
    from hw import toolchain
    from ptq2rtl.rtl_run import format_summary, rtl_run
    from sim.program import IntegerProgram

    toolchain.setup_simulator(args.sim)
    result = rtl_run(IntegerProgram.load(args.program), args.accel, sim=args.sim, samples=args.samples,
                     data=args.data, layer=args.layer)
    _print(result, args.json, format_summary)
    if not result["ok"]:
        raise SystemExit(1)


def cmd_report(args) -> None:
    from reports import report

    if args.workers or args.address:
        _check_ray(args)
    report.run(args.output, selection="full" if args.full else "quick" if args.quick else "default",
               limit=args.limit, hardware=not args.no_hardware, workers=args.workers or 0, address=args.address)


def workers(text: str) -> int:
    """An argparse type: a number of Ray workers, 0 for none (this process)."""
    return 0 if text.strip() == "0" else positive_int(text)


def _check_ray(args) -> None:
    """``--workers`` / ``--address`` as explore takes them: one or the other, and Ray installed to use them."""
    from importlib.util import find_spec

    if args.address and args.workers is not None:
        raise UsageError("--workers sizes a local Ray; the cluster at --address brings its own workers")
    if args.workers != 0 and find_spec("ray") is None:
        raise UsageError(f"{args.command} runs on Ray, which is not installed: pip install 'ptq2rtl[explore]' "
                         "(or --workers 0 to run in this process)")


def cmd_explore(args) -> None:
    _check_ray(args)
    from ptq2rtl import explore

    spec = explore.load_spec(args.spec, limit=args.limit)  # a bad spec stops here, before anything is written
    out = args.output or str(Path("explore") / Path(args.spec).stem)
    explore.run(spec, out, workers=1 if args.workers is None else args.workers, address=args.address)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ptq2rtl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the models ptq2rtl can load")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("train", help="(re)train a bundled model (vit-digits, cnn-digits), or bibert-minilm's "
                                     "binary student (into the cache)")
    s.add_argument("model")
    s.add_argument("-o", "--output", type=output_file, help="checkpoint path (default: the bundled one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_train)

    def model_args(s):
        s.add_argument("--checkpoint", help="weights for a timm model (.pth or .safetensors)")
        s.add_argument("--data", help="ImageNet-style folder for a timm model; for a text model, a text file with "
                                      "one sentence a line (default: the standard-library corpus)")

    def calib_arg(s):
        s.add_argument("--calib", choices=("real", "zeroq", "dsg"), default="real",
                       help="calibration images: the model's calibration split, or (a CNN) synthesized from its "
                            "BatchNorm statistics, plain (zeroq) or with DSG's slack and layerwise enhancement")

    s = sub.add_parser("quantize", help="post-training quantization into an integer program")
    s.add_argument("model", help="a model name, or a local Hugging Face BERT / DistilBERT / RoBERTa folder")
    s.add_argument("--method", default="baseline")
    s.add_argument("--wbits", type=int, default=8)
    s.add_argument("--abits", type=int, default=8)
    s.add_argument("-o", "--output", type=output_file, required=True)
    model_args(s)
    calib_arg(s)
    s.set_defaults(fn=cmd_quantize)

    s = sub.add_parser("eval", help="accuracy / fidelity of a program (integer protocol) or a model (FP32, paper)")
    s.add_argument("target", help="a program file, a model name, or a local Hugging Face encoder folder")
    s.add_argument("--fp32", action="store_true")
    s.add_argument("--method")
    s.add_argument("--wbits", type=int, default=8)
    s.add_argument("--abits", type=int, default=8)
    s.add_argument("--protocol", choices=("paper", "integer"), default="paper")
    s.add_argument("--limit", type=positive_int, help="evaluate on the first N samples only")
    s.add_argument("--accel", type=accelerator,
                   help="refuse the program if this accelerator (a bundled name or a YAML file) cannot run it")
    s.add_argument("--json", action="store_true")
    model_args(s)
    calib_arg(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("simulate", help="cycles, latency and energy of a program on an accelerator")
    s.add_argument("program")
    s.add_argument("--accel", type=accelerator, default="edge-int4", help="a bundled config name or a YAML file")
    s.add_argument("--batch", type=positive_int, default=1)
    s.add_argument("--seq-len", type=positive_int, default=128, help="tokens of a text program")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_simulate)

    s = sub.add_parser("sweep", help="accuracy across methods and widths, both protocols")
    s.add_argument("model")
    s.add_argument("--methods", help="comma-separated (default: all registered)")
    s.add_argument("--bits", type=_bits, default=[8, 6, 4], help="widths WnAn, e.g. 8,6,4")
    s.add_argument("--protocol", choices=("paper", "integer", "both"), default="both")
    s.add_argument("--limit", type=positive_int)
    s.add_argument("--json", action="store_true")
    model_args(s)
    calib_arg(s)
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("sensitivity", help="the metric when one quantization site (or layer) at a time is raised")
    s.add_argument("model")
    s.add_argument("--method", default="baseline")
    s.add_argument("--bits", type=int, default=4, help="the uniform WnAn every other site stays at")
    s.add_argument("--high", type=int, default=8, help="the width a raised site gets")
    s.add_argument("--by", choices=("site", "layer"), default="site")
    s.add_argument("--protocol", choices=("integer", "paper"), default="integer")
    s.add_argument("--limit", type=positive_int, help="evaluate on the first N samples only")
    s.add_argument("--plot", type=output_file, help="a PNG bar plot of the gains")
    s.add_argument("--json", action="store_true")
    model_args(s)
    s.set_defaults(fn=cmd_sensitivity)

    s = sub.add_parser("mixed", help="greedy mixed precision: per-site widths under an energy or size budget")
    s.add_argument("model")
    s.add_argument("--method", default="mptq", help="a method, or several comma-separated (one run each)")
    s.add_argument("--bits", type=int, default=4, help="the uniform WnAn every site starts at")
    s.add_argument("--high", type=int, default=8, help="the width a raised site gets")
    s.add_argument("--budget", required=True,
                   help="energy:MICROJOULES, size:KILOBYTES (weights), or energy:WnAn / size:WnAn (what that uniform "
                        "scheme costs)")
    s.add_argument("--accel", type=accelerator, default="edge-int8", help="the accelerator that prices the energy")
    s.add_argument("--by", choices=("site", "layer"), default="site")
    s.add_argument("--limit", type=positive_int, help="evaluate on the first N samples only")
    s.add_argument("--plot", type=output_file, help="a PNG of each method's uniform and mixed points: metric vs energy")
    s.add_argument("--json", action="store_true", help="a list of results, one per method")
    model_args(s)
    s.set_defaults(fn=cmd_mixed)

    s = sub.add_parser("compress", help="distillation + pruning + quantization of a sentence encoder, or the table "
                                        "of their combinations")
    s.add_argument("model", help="minilm (the corpus it trains on is minilm's)")
    s.add_argument("--distill", metavar="KEY=VALUE,...",
                   help="a student distilled from the FP32 model: layers=3,ffn=0 (0: the teacher's width),"
                        "epochs=3,batch=32,lr=1e-3,hidden_weight=1,seed=0 (any of them; '' for the defaults)")
    s.add_argument("--prune", metavar="KEY=VALUE,...",
                   help="fractions removed: heads=0.25 (of all heads), ffn=0.25 (of each block's neurons), "
                        "magnitude=0.5 (of each linear's weights, set to zero)")
    s.add_argument("--recover", metavar="KEY=VALUE,...",
                   help="distil the pruned model from the FP32 one: epochs=1,lr=1e-3,... ('' for the defaults)")
    s.add_argument("--method", help="a PTQ method on top (default: none, the float model)")
    s.add_argument("--bits", default="8", help="WIDTH (WnAn) or WBITS/ABITS, with --method (default 8)")
    s.add_argument("--accel", type=accelerator, default="edge-int8", help="the accelerator that prices cycles and "
                                                                          "energy")
    s.add_argument("--limit", type=positive_int, help="evaluate on the first N sentences only")
    s.add_argument("--table", action="store_true", help="the table of combinations (each cached)")
    s.add_argument("-o", "--output", type=output_file, help="write the integer program (needs --method)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_compress)

    s = sub.add_parser("verilog", help="Verilog of the accelerator and of each unit, one file each, plus a manifest")
    s.add_argument("--accel", type=accelerator, default="edge-int4")
    s.add_argument("-o", "--output", type=output_dir, required=True)
    s.add_argument("--no-lint", action="store_true", help="skip verilator --lint-only")
    s.add_argument("--units-only", action="store_true", help="the units without accelerator.v, which joins them")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_verilog)

    s = sub.add_parser("synth", help="LUT / FF / DSP / BRAM per unit (yosys), ECP5 / iCE40 Fmax (nextpnr)")
    s.add_argument("--accel", type=accelerator, default="edge-int4")
    s.add_argument("--target", choices=("ice40", "ecp5", "xc7"),
                   help="FPGA family (default: the config's target part, else ecp5)")
    s.add_argument("--part", choices=("85f", "45f", "25f", "up5k"),
                   help="LFE5U-85F / 45F / 25F for ecp5 (default 85f), up5k for ice40")
    s.add_argument("--unit", action="append", type=unit_of("hw.verilog", "DESIGNS"),
                   help="only this unit, or 'accelerator' for the whole design (repeatable; default: every unit, "
                        "and the accelerator for a config whose target is an FPGA part)")
    s.add_argument("--no-fmax", action="store_true", help="skip place and route")
    s.add_argument("--freq", type=positive_int, help="place-and-route target in MHz (default: the config's clock)")
    s.add_argument("--pnr-timeout", type=positive_int, metavar="SECONDS",
                   help="stop a unit's place and route after this long (its row says so)")
    s.add_argument("--no-cache", action="store_true", help="run the tools even where a cached result exists")
    s.add_argument("--workdir", metavar="DIR",
                   help="keep the tools' files here, nextpnr's log as it runs included (<unit>_fmax.log)")
    s.add_argument("--no-dsp", action="store_true", help="map multipliers to LUTs instead of DSP blocks")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("regress", help="RTL vs golden model regression (cocotb)")
    s.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    s.add_argument("--unit", action="append", type=unit_of("rtl_tests.units"), help="only this unit (repeatable)")
    s.add_argument("--no-traces", action="store_true", help="skip the vectors replayed from program traces")
    s.add_argument("--full", action="store_true", help="every exported size (and with --programs every method)")
    s.add_argument("--programs", action="store_true",
                   help="also whole vit-digits programs on the accelerator RTL (quantizes them: needs torch)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_regress)

    s = sub.add_parser("rtl-run", help="a whole program on the accelerator RTL against the engine and the schedule")
    s.add_argument("program")
    s.add_argument("--accel", type=accelerator, required=True)
    s.add_argument("--sim", choices=("verilator", "icarus"), default="verilator")
    s.add_argument("--samples", type=positive_int, default=16, help="evaluation samples, one after the other")
    s.add_argument("--layer", help="only this layer's ops (blocks.0), or ops by name prefix (blocks.1.0.dw: that op "
                   "and its epilogue); inputs from the engine's run")
    s.add_argument("--data", help="ImageNet-style folder for a timm model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_rtl_run)

    s = sub.add_parser("report", help="the main job: methods x widths on the bundled models, synthesis, the RTL "
                                      "regression -> reports/")
    s.add_argument("-o", "--output", type=output_dir, default="reports", help="output folder (default: reports)")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true",
                       help="every width (W8A8 to W3A3), whole evaluation sets, every design placed and routed, the "
                            "whole regression (default: the representative selection)")
    which.add_argument("--quick", action="store_true", help="one method (baseline), one width (W4A4)")
    s.add_argument("--limit", type=positive_int, help="evaluate on the first N samples of each model")
    s.add_argument("--no-hardware", action="store_true", help="skip synthesis and the RTL regression")
    s.add_argument("--workers", type=workers, help="compute the entries on a local Ray with N workers "
                                                   "(default: in this process)")
    s.add_argument("--address", help="compute the entries on an existing Ray cluster (ray://HOST:PORT)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("explore", help="a design space (YAML spec) on Ray: results table, Pareto fronts, summary")
    s.add_argument("spec", help="the spec file (e.g. configs/explore/vit-digits.yaml)")
    s.add_argument("-o", "--output", type=output_dir, help="output folder (default: explore/<spec name>)")
    s.add_argument("--workers", type=workers, help="local Ray workers (default 1; 0: in this process, no Ray)")
    s.add_argument("--address", help="an existing Ray cluster (ray://HOST:PORT, or HOST:PORT on one of its nodes)")
    s.add_argument("--limit", type=positive_int, help="evaluate every program on at most its first N samples")
    s.set_defaults(fn=cmd_explore)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)
        args.fn(args)
    except user_errors() as exc:
        print(f"ptq2rtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ptq2rtl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``ptq2rtl simulate ... | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
