"""A seeded mutation fuzzer over IntegerProgram files: the JSON graph and the tensors.

Every mutant either fails to load with a :class:`ProgramError` or loads and
then runs on the golden engine (and through the cycle model) without any
exception but a ProgramError about the fuzzer's fixed inputs (which a mutant
may have made unfit: another input shape, a smaller embedding table). Anything else — a TypeError from the loader, an IndexError from
numpy, a silent wrap — is a crash the fuzzer reports with the mutation that
caused it.

    python -m tests.fuzz_programs --mutants 20000 [--seed 0]

runs it long on the vit-digits W4A4 program and a small BERT program; the
test suite runs a few thousand.
"""

from __future__ import annotations

import argparse
import copy
import json
import traceback
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sim import engine
from sim.accel import AccelError, load_accel
from sim.cycles import program_cycles
from sim.program import IntegerProgram, ProgramError, _from_graph

WRONG_VALUES = (None, True, False, -1, 0, 1, 2, 3, 7, 8, 16, 33, 64, 1 << 40, -(1 << 40), 0.5, "8", "", [], [1], {},
                {"a": 1}, [None], [0], [-1, 2])
DTYPES = (np.float32, np.float64, np.bool_, np.int8, np.uint8, np.int16, np.int64, np.uint64)


def graph_and_arrays(program: IntegerProgram) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON graph and arrays a program file holds (what save() writes)."""
    arrays = {f"{op.name}.{k}": np.ascontiguousarray(v) for op in program.ops for k, v in op.params.items()}
    graph = {"schema_version": 1, "model": program.model, "meta": program.meta,
             "inputs": [t.name for t in program.inputs], "outputs": program.outputs,
             "tensors": [t.to_json() for t in program.tensors.values()], "ops": [op.to_json() for op in program.ops]}
    return json.loads(json.dumps(graph)), arrays


def _containers(node, path=()):
    """Every dict and list in a JSON tree, with its path."""
    if isinstance(node, (dict, list)):
        yield path, node
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            yield from _containers(v, path + (k,))


def mutate(graph: dict, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> str:
    """Apply one random mutation in place; returns what it did."""
    if arrays and rng.random() < 0.4:
        return _mutate_array(arrays, rng)
    return _mutate_graph(graph, rng)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _mutate_graph(graph: dict, rng: np.random.Generator) -> str:
    path, node = _pick(rng, list(_containers(graph)))
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        node_desc = "/".join(map(str, path))
        if isinstance(node, list):
            node.append(_pick(rng, WRONG_VALUES))
        else:
            node["extra"] = 1
        return f"grow empty {node_desc}"
    key = _pick(rng, keys)
    where = "/".join(map(str, path + (key,)))
    r = rng.random()
    if r < 0.2:
        del node[key]
        return f"remove {where}"
    old = node[key]
    if r < 0.45 and isinstance(old, (int, float)) and not isinstance(old, bool):
        new = _pick(rng, [old + 1, old - 1, old * 2, -old, 0, old + (1 << 20), old // 2])
    elif r < 0.6 and isinstance(old, str):
        tensors = graph.get("tensors")
        names = [t["name"] for t in (tensors if isinstance(tensors, list) else [])
                 if isinstance(t, dict) and isinstance(t.get("name"), str)]
        kinds = ["linear", "matmul", "requant", "add", "add_const", "layernorm", "softmax_log2", "matmul_log2",
                 "gelu", "embedding", "patchify", "split", "split_heads", "merge_heads", "concat_token",
                 "select_token", "mean_pool", "conv3d"]
        new = _pick(rng, (names or ["x"]) + kinds + [old + "_", ""])
    elif r < 0.7 and isinstance(old, bool):
        new = not old
    elif r < 0.8 and isinstance(old, list) and old:
        new = list(old)
        j = int(rng.integers(len(new)))
        op = _pick(rng, ("drop", "dup", "swap"))
        if op == "drop":
            new.pop(j)
        elif op == "dup":
            new.insert(j, copy.deepcopy(new[j]))
        else:
            k = int(rng.integers(len(new)))
            new[j], new[k] = new[k], new[j]
    else:
        new = copy.deepcopy(_pick(rng, WRONG_VALUES))
    node[key] = new
    return f"set {where}: {old!r:.40} -> {new!r:.40}"


def _mutate_array(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> str:
    key = _pick(rng, sorted(arrays))
    a = arrays[key]
    r = rng.random()
    if r < 0.25:
        dt = _pick(rng, DTYPES)
        arrays[key] = a.astype(dt)
        return f"dtype {key} -> {np.dtype(dt).name}"
    if r < 0.5:
        b = a.copy().ravel()
        j = int(rng.integers(b.size)) if b.size else 0
        if b.size:
            v = _pick(rng, [int(b[j]) + 1, int(b[j]) - 1, -int(b[j]) - 1, 127, 128, -129, 255, 1 << 15, 1 << 16,
                            -(1 << 15) - 1, (1 << 31) - 1, -(1 << 31), 63, 64, 0, -1])
            b = b.astype(np.int64)
            b[j] = v
            fits = np.issubdtype(a.dtype, np.integer) and np.iinfo(a.dtype).min <= v <= np.iinfo(a.dtype).max
            arrays[key] = b.reshape(a.shape).astype(a.dtype if fits else np.int64)
            return f"value {key}[{j}] -> {v}"
        return f"noop {key}"
    if r < 0.75 and a.ndim:
        axis = int(rng.integers(a.ndim))
        n = a.shape[axis]
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(0, max(0, n - int(rng.integers(1, 3))))
        arrays[key] = a[tuple(sl)].copy() if rng.random() < 0.6 else np.concatenate([a, a], axis=axis)
        return f"shape {key} {a.shape} -> {arrays[key].shape}"
    if r < 0.85:
        arrays[key] = a.reshape(-1) if rng.random() < 0.5 else a[None]
        return f"rank {key} {a.shape} -> {arrays[key].shape}"
    if r < 0.92:
        del arrays[key]
        return f"remove array {key}"
    arrays[key + "x"] = a
    return f"stray array {key}x"


@dataclass
class FuzzResult:
    mutants: int = 0
    rejected: int = 0
    accepted: int = 0  #: loaded and ran on the engine and the cycle model
    #: loaded, then refused by the engine with a ProgramError: once the token count is known (a text program
    #: re-validated), or because the fuzzer's fixed inputs no longer fit (another input shape, a smaller table)
    refused_at_run: int = 0
    crashed: list[str] = field(default_factory=list)  #: mutation, exception
    reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return (f"{self.mutants} mutants: {self.rejected} rejected on load (ProgramError), {self.accepted} accepted "
                f"and ran, {self.refused_at_run} refused when run (ProgramError), {len(self.crashed)} crashed")


def fuzz(program: IntegerProgram, inputs: dict[str, np.ndarray], mutants: int, seed: int = 0,
         max_mutations: int = 3) -> FuzzResult:
    """Mutate ``program`` ``mutants`` times (1..max_mutations mutations each), load, run, classify."""
    rng = np.random.default_rng(seed)
    base_graph, base_arrays = graph_and_arrays(program)
    accel = load_accel("edge-int8")
    res = FuzzResult()
    for _ in range(mutants):
        graph = copy.deepcopy(base_graph)
        arrays = dict(base_arrays)
        what = [mutate(graph, arrays, rng) for _ in range(int(rng.integers(1, max_mutations + 1)))]
        res.mutants += 1
        try:
            mutant = _from_graph(json.loads(json.dumps(graph)), arrays)
        except ProgramError as exc:
            res.rejected += 1
            res.reasons[str(exc).split(":")[0][:60]] += 1
            continue
        except Exception as exc:  # noqa: BLE001 -- the point of the fuzzer
            res.crashed.append(f"load: {'; '.join(what)}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            continue
        try:
            engine.run(mutant, inputs)
            try:
                program_cycles(mutant, accel, batch=1, seq_len=16)
            except AccelError:
                pass
            res.accepted += 1
        except ProgramError as exc:  # e.g. a mutated input shape or a shrunk embedding table
            res.refused_at_run += 1
            res.reasons["run: " + str(exc)[:60]] += 1
        except Exception as exc:  # noqa: BLE001
            res.crashed.append(f"run: {'; '.join(what)}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
    return res


def programs() -> list[tuple[str, IntegerProgram, dict[str, np.ndarray]]]:
    """The fuzzed programs with engine inputs: vit-digits W4A4 (the bundled model) and a small BERT."""
    from ptq2rtl import flows, models
    from quant.quantizers import program_inputs
    from tests.synthetic_programs import bert_program

    vit, _ = flows.quantize("vit-digits", "baseline", 4, 4, progress=False)
    images, _ = next(iter(models.iter_batches("vit-digits", "eval", 2)))
    bert = bert_program(depth=1)
    rng = np.random.default_rng(0)
    t = 9
    text = {"input_ids": rng.integers(0, 120, (2, t)), "token_type_ids": np.zeros((2, t), np.int64),
            "attention_mask": np.ones((2, t), np.int64)}
    text["attention_mask"][1, 6:] = 0
    return [("vit-digits-baseline-w4a4", vit, program_inputs(vit, images)),
            ("bert-synthetic", bert, {k: v for k, v in text.items() if k in {s.name for s in bert.inputs}})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=20_000, help="per program")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    total = FuzzResult()
    for name, program, inputs in programs():
        r = fuzz(program, inputs, args.mutants, args.seed)
        print(f"{name}: {r.line()}", flush=True)
        for c in r.crashed[:10]:
            print("  CRASH", c)
        total.mutants += r.mutants
        total.rejected += r.rejected
        total.accepted += r.accepted
        total.refused_at_run += r.refused_at_run
        total.crashed += r.crashed
    print(f"total: {total.line()}")


if __name__ == "__main__":
    main()
