"""The command line: bad input is one clear line and exit status 2, and nothing is half-written."""

from __future__ import annotations

import json

from ptq2rtl.cli import main


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
    cfg.write_text((__import__("pathlib").Path(__file__).parents[1] / "configs" / "edge-int4.yaml").read_text()
                   .replace("rows: 16", "rows: 0"))
    prog = tmp_path / "vitd.safetensors"
    assert main(["quantize", "vit-digits", "--wbits", "4", "--abits", "4", "-o", str(prog)]) == 0
    assert main(["simulate", str(prog), "--accel", str(cfg)]) == 2
    assert "array.rows" in capsys.readouterr().err
