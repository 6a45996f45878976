"""The minilm evaluation corpus: English sentences from Python standard-library docstrings.

``generate_stdlib_sentences()`` walks a fixed, sorted list of standard-library
modules, reads the docstrings of each module and of the classes, functions and
methods it defines, splits them into sentences and keeps the ones that read
like prose: 6 to 40 words, a capital first letter, a final period, no code.
The standard library's docstrings change a little between Python releases,
so the sentences were generated once (Python 3.11.7) and ship as
``ptq2rtl/data/stdlib_sentences.txt``, one per line, deduplicated and sorted.

The split is a function of the sentences alone, not of a random generator:
sentences are ordered by the SHA-256 of their UTF-8 text; the first
``CALIB_SIZE`` (256) are the calibration split, the next ``EVAL_SIZE`` (2,000)
the evaluation split, and the rest are unused. ``text_file_split`` splits a
user's text file by the same order.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

SENTENCES_FILE = Path(__file__).resolve().parent / "data" / "stdlib_sentences.txt"
GENERATED_WITH = "3.11.7"  # the Python whose standard library produced SENTENCES_FILE
CALIB_SIZE = 256
EVAL_SIZE = 2000
MIN_WORDS = 6
MAX_WORDS = 40

# Present in every CPython >= 3.10 on every platform, importable without side
# effects (no GUI, no browser, nothing printed), and rich in docstrings.
STDLIB_MODULES: tuple[str, ...] = tuple(sorted((
    "abc", "argparse", "array", "ast", "asyncio.events", "asyncio.futures", "asyncio.locks",
    "asyncio.queues", "asyncio.streams", "asyncio.subprocess", "asyncio.tasks", "base64",
    "bdb", "binascii", "bisect", "builtins", "bz2", "calendar", "cmd", "code", "codecs",
    "collections", "collections.abc", "colorsys", "concurrent.futures", "configparser",
    "contextlib", "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "email.parser", "email.utils", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt",
    "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib",
    "importlib.abc", "importlib.machinery", "importlib.metadata", "importlib.resources",
    "importlib.util", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder",
    "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config",
    "logging.handlers", "lzma", "mailbox", "marshal", "math", "mimetypes", "modulefinder",
    "multiprocessing.connection", "multiprocessing.managers", "multiprocessing.pool",
    "multiprocessing.process", "multiprocessing.queues", "multiprocessing.synchronize",
    "netrc", "numbers", "operator", "optparse", "os", "os.path", "pathlib", "pdb", "pickle",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile", "pstats",
    "py_compile", "pyclbr", "queue", "quopri", "random", "re", "reprlib", "rlcompleter",
    "runpy", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "site",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string",
    "struct", "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "token", "tokenize", "trace", "traceback",
    "tracemalloc", "types", "typing", "unittest.case", "unittest.loader", "unittest.main",
    "unittest.mock", "unittest.result", "unittest.runner", "unittest.suite", "urllib.error",
    "urllib.parse", "urllib.request", "urllib.robotparser", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "xml.sax.handler",
    "xml.sax.saxutils", "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo",
)))

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"^\(?[A-Za-z][A-Za-z'-]*[),.;:]*$")
_CODE_MARKERS = (">>>", "`", "::", "...", "->", "==", "!=", "__", "{", "}", "[", "]", "|", "\\", "*", "=", "<", ">")


def _docstrings(module: ModuleType) -> list[str]:
    """Docstrings of a module and of the public classes, functions and methods it defines, in name order.

    Private names are skipped: they are internal helpers, and test tools patch some of them.
    """
    docs = [module.__doc__ or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        docs.append(obj.__doc__ or "")
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if member_name.startswith("_") and member_name != "__init__":
                    continue
                member = getattr(member, "__func__", member)  # unwrap classmethod / staticmethod
                if inspect.isroutine(member) or isinstance(member, property):
                    docs.append(member.__doc__ or "")
    return [d for d in docs if isinstance(d, str) and d.strip()]


def _prose_paragraphs(doc: str) -> list[str]:
    """Paragraphs of a docstring with wrapped lines joined; indented blocks and doctests dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", doc):
        lines = block.splitlines()
        if any(line.startswith((" ", "\t", ">>>")) for line in lines):
            continue  # code, doctest, or an indented argument list
        paragraphs.append(" ".join(line.strip() for line in lines))
    return paragraphs


def is_prose_sentence(sentence: str) -> bool:
    """6-40 plain words, capitalized, ending with a period, no code-like tokens."""
    words = sentence.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS):
        return False
    if not (sentence[0].isupper() and sentence.endswith(".") and not sentence.endswith("..")):
        return False
    if any(marker in sentence for marker in _CODE_MARKERS):
        return False
    plain = sum(bool(_WORD.match(word)) for word in words)
    return plain >= 0.9 * len(words) and sentence.count("(") == sentence.count(")")


def sentences_from_docstring(doc: str) -> list[str]:
    """The prose sentences of one docstring, in order."""
    return [
        s.strip()
        for paragraph in _prose_paragraphs(inspect.cleandoc(doc))
        for s in _SENTENCE_END.split(paragraph)
        if is_prose_sentence(s.strip())
    ]


def generate_stdlib_sentences(modules: tuple[str, ...] = STDLIB_MODULES) -> list[str]:
    """Distinct prose sentences from the docstrings of ``modules``, sorted.

    Runs in a fresh, isolated interpreter (``python -I``), because libraries
    loaded into this one (torch, pytest, ...) patch some standard-library
    functions and so change their docstrings. Modules missing from the
    interpreter are skipped; the standard library itself changes a little
    between Python releases, which is why the shipped file is the reference.
    """
    # -I keeps this file's folder off sys.path, so sibling modules cannot shadow the stdlib.
    completed = subprocess.run(
        [sys.executable, "-I", __file__, *modules], capture_output=True, text=True, encoding="utf-8", check=True
    )
    return json.loads(completed.stdout)


def _extract_sentences(modules: list[str]) -> list[str]:
    """The body of ``generate_stdlib_sentences``, run in the isolated interpreter."""
    found: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # e.g. typing.io, touched by the walk
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for doc in _docstrings(module):
                found.update(sentences_from_docstring(doc))
    return sorted(found)


def write_sentences(path: str | Path = SENTENCES_FILE) -> int:
    """Regenerate the sentences file; returns the number of sentences written."""
    sentences = generate_stdlib_sentences()
    Path(path).write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return len(sentences)


@cache
def load_sentences() -> tuple[str, ...]:
    """The shipped corpus, in file (sorted) order."""
    return tuple(line for line in SENTENCES_FILE.read_text(encoding="utf-8").splitlines() if line)


def _split_order(sentences: tuple[str, ...]) -> list[str]:
    return sorted(sentences, key=lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest())


def corpus_split(split: str) -> list[str]:
    """The ``calib`` (256) or ``eval`` (2,000) sentences, in SHA-256 order."""
    ordered = _split_order(load_sentences())
    if split == "calib":
        return ordered[:CALIB_SIZE]
    if split == "eval":
        return ordered[CALIB_SIZE : CALIB_SIZE + EVAL_SIZE]
    raise ValueError(f"unknown corpus split {split!r}: expected 'calib' or 'eval'")


MIN_FILE_SENTENCES = 4  # one to calibrate, three to evaluate (a nearest neighbour needs two)


def text_file_sentences(path: str | Path) -> tuple[str, ...]:
    """The distinct non-empty lines of a user's text file, stripped, in file order; ``ModelError`` naming
    the file if it cannot be read or has fewer than ``MIN_FILE_SENTENCES``."""
    from ptq2rtl.models.registry import ModelError

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"data file {path}: {'a folder' if path.is_dir() else 'no such file'}; "
                         "a text model takes a text file, one sentence a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ModelError(f"data file {path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    sentences = tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if len(sentences) < MIN_FILE_SENTENCES:
        raise ModelError(f"data file {path}: {len(sentences)} distinct sentences; need at least {MIN_FILE_SENTENCES}")
    return sentences


def text_file_split(path: str | Path, split: str) -> list[str]:
    """The ``calib`` or ``eval`` sentences of a user's text file, one sentence a line.

    Lines are stripped, empty and repeated ones dropped, and the rest ordered by
    SHA-256 as the corpus is: the first quarter, at most ``CALIB_SIZE``, is the
    calibration split, the next ``EVAL_SIZE`` at most the evaluation split. A
    file of 1,024 or more sentences thus splits as the shipped corpus does.
    """
    ordered = _split_order(text_file_sentences(path))
    calib = min(CALIB_SIZE, len(ordered) // 4)
    if split == "calib":
        return ordered[:calib]
    if split == "eval":
        return ordered[calib : calib + EVAL_SIZE]
    raise ValueError(f"unknown split {split!r}: expected 'calib' or 'eval'")


if __name__ == "__main__":
    print(json.dumps(_extract_sentences(sys.argv[1:])))
