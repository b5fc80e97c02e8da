"""Prompt sets of the text benchmark, built from text that is on every machine and that nobody here wrote.

Two sets:

- ``grounded`` (input-grounded): a task over a passage the prompt quotes, so a good answer
  reuses the prompt's words (where prompt lookup and lookahead should pay off). Passages come
  from the standard library of the Python running this code (``sysconfig`` ``stdlib``, always
  installed; never imported, only read and parsed with ``ast``): prose paragraphs of module
  docstrings (tasks: summarise, rewrite for a beginner, extract the names it mentions) and
  public top-level functions' source (tasks: explain, add type hints and return the function).
- ``open``: short general questions with no passage (a fixed list written for this benchmark),
  where drafts can only come from the answer itself.

Each prompt records where its text came from (file, line range, Python version), so a table
can be traced back. The same ``(set, n, seed)`` on the same Python version gives the same
prompts; another Python version has other standard-library text, hence other grounded prompts.

Must never: read a file outside the standard library, import a standard-library module to get
its text (``ast`` only), depend on the working directory, or use randomness other than
``random.Random(seed)``.
"""

from __future__ import annotations

import ast
import functools
import platform
import random
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROMPT_SETS", "TextPrompt", "grounded_candidates", "open_questions", "prompt_set", "stdlib_dir"]

PROMPT_SETS = ("grounded", "open")


@dataclass(frozen=True)
class TextPrompt:
    """One benchmark prompt: ``text`` is the user message; ``source`` says where its passage came from."""

    id: str  # e.g. "grounded-3"
    set: str  # "grounded" or "open"
    task: str  # "summarise", "rewrite", "extract", "explain-code", "type-hints", "question"
    source: str  # "textwrap.py docstring paragraphs 1-2 (Python 3.11.7 standard library)", or "written for this benchmark"
    text: str


# passage tasks: name -> template with {module} and {passage}
_DOC_TASKS = {
    "summarise": "Summarise the following paragraph from the documentation of Python's `{module}` module "
    "in two or three sentences.\n\n{passage}",
    "rewrite": "Rewrite the following text from the documentation of Python's `{module}` module in plain "
    "English for a beginner, keeping every fact.\n\n{passage}",
    "extract": "List every Python name (module, class, function, method or parameter) mentioned in the "
    "following text, one per line, each with a few words on what the text says about it.\n\n{passage}",
}
_CODE_TASKS = {
    "explain-code": "Explain step by step what this function from Python's `{module}` module does.\n\n"
    "```python\n{passage}\n```",
    "type-hints": "Add type hints to this function from Python's `{module}` module and return the whole "
    "function, unchanged otherwise.\n\n```python\n{passage}\n```",
}

# Short general questions; any fixed list does, these were written for this benchmark.
_OPEN_QUESTIONS = (
    "What is the capital of France?",
    "Give three tips for sleeping better.",
    "Why is the sky blue?",
    "What is the difference between weather and climate?",
    "Write a haiku about autumn leaves.",
    "How do plants make their food?",
    "Name three famous painters and one painting by each.",
    "What are the benefits of regular exercise?",
    "Explain what a prime number is.",
    "How does a rainbow form?",
    "Suggest a simple recipe for breakfast.",
    "What is the largest ocean on Earth?",
    "Why do we have seasons?",
    "Give me a short motivational quote and explain it.",
    "What is photosynthesis?",
    "How many continents are there? Name them.",
    "What should I pack for a weekend hiking trip?",
    "Explain gravity to a ten-year-old.",
    "What is the boiling point of water at sea level?",
    "Write two sentences about the importance of reading.",
    "What is a computer virus?",
    "How do bees make honey?",
    "Why is it important to drink water?",
    "Describe the water cycle in a few sentences.",
)

_MIN_CHARS, _MAX_CHARS = 300, 1000  # a passage long enough to work on, short enough for a small model
_MIN_LINES, _MAX_LINES = 6, 24  # function sources


def stdlib_dir() -> Path:
    """The standard-library folder of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def _python() -> str:
    return f"Python {platform.python_version()}"


def _is_prose(text: str) -> bool:
    """Mostly words (not a table, a code sample or a doctest)."""
    if ">>>" in text or "::" in text or "|" in text:
        return False
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and sum(c.isalpha() for c in chars) / len(chars) > 0.8


def _doc_passages(tree: ast.Module) -> list[tuple[str, str]]:
    """(passage, where) chunks of consecutive prose paragraphs of the module docstring,
    ``_MIN_CHARS``..``_MAX_CHARS`` long; ``where`` counts paragraphs from 1 (blank-line separated)."""
    doc = ast.get_docstring(tree, clean=True)
    if not doc:
        return []
    out: list[tuple[str, str]] = []
    chunk: list[tuple[int, str]] = []

    def flush() -> None:
        if sum(len(p) for _, p in chunk) >= _MIN_CHARS:
            out.append(
                ("\n\n".join(p for _, p in chunk), f"docstring paragraphs {chunk[0][0]}-{chunk[-1][0]}")
            )
        chunk.clear()

    for i, para in enumerate(doc.split("\n\n"), start=1):
        if not para.strip() or not _is_prose(para) or len(para) > _MAX_CHARS:
            flush()
            continue
        if sum(len(p) for _, p in chunk) + len(para) > _MAX_CHARS:
            flush()
        chunk.append((i, para))
    flush()
    return out


def _function_sources(source: str, tree: ast.Module) -> list[tuple[str, str]]:
    """(source, line range) of public top-level functions with ``_MIN_LINES``..``_MAX_LINES`` lines."""
    out, lines = [], source.splitlines()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
            continue
        n_lines = node.end_lineno - node.lineno + 1
        # a top-level def starts at column 0, so its lines are its source (get_source_segment
        # would re-split the whole file for every function)
        text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        if _MIN_LINES <= n_lines <= _MAX_LINES and len(text) <= 2 * _MAX_CHARS:
            out.append((text, f"lines {node.lineno}-{node.end_lineno}"))
    return out


@functools.cache
def grounded_candidates() -> tuple[TextPrompt, ...]:
    """Every grounded prompt the standard library offers, in file order (tasks not yet assigned).

    Each candidate's ``task`` is ``"doc"`` or ``"code"`` and ``text`` is the bare passage;
    ``prompt_set`` picks among them and applies a task template.
    """
    out = []
    for path in sorted(stdlib_dir().glob("*.py")):
        module = path.stem
        if module.startswith("_") or module.startswith("test"):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # not our text to fix; another file will do
        for kind, items in (("doc", _doc_passages(tree)), ("code", _function_sources(source, tree))):
            for passage, lines in items:
                where = f"{path.name} {lines} ({_python()} standard library)"
                out.append(TextPrompt(f"{module}:{lines}", "grounded", kind, where, passage))
    return tuple(out)


def open_questions() -> tuple[str, ...]:
    """The fixed open-question list, in its written order."""
    return _OPEN_QUESTIONS


def prompt_set(name: str, n: int, seed: int = 0) -> list[TextPrompt]:
    """The first ``n`` prompts of set ``name`` (``grounded`` or ``open``) drawn with ``seed``.

    Grounded: passages drawn without replacement from ``grounded_candidates()`` (docstring
    passages and function sources alternately, so both kinds are in even a small set), each
    given a task drawn for it. Open: the questions shuffled by ``seed``. Same arguments on the
    same Python version, same prompts.

    Raises:
        ValueError: an unknown set, ``n < 1``, or more prompts than the set has.
    """
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; choose from {', '.join(PROMPT_SETS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(f"{name}:{seed}")
    if name == "open":
        questions = list(_OPEN_QUESTIONS)
        if n > len(questions):
            raise ValueError(f"the open set has {len(questions)} questions; asked for {n}")
        rng.shuffle(questions)
        return [TextPrompt(f"open-{i}", "open", "question", "written for this benchmark", q)
                for i, q in enumerate(questions[:n])]  # fmt: skip
    pools = {kind: [c for c in grounded_candidates() if c.task == kind] for kind in ("doc", "code")}
    for pool in pools.values():
        rng.shuffle(pool)
    if n > sum(map(len, pools.values())):
        raise ValueError(f"the grounded set has {sum(map(len, pools.values()))} passages here; asked for {n}")
    picked: list[TextPrompt] = []
    order = ["doc", "code"]
    while len(picked) < n:
        kind = order[len(picked) % 2] if pools[order[len(picked) % 2]] else order[(len(picked) + 1) % 2]
        cand = pools[kind].pop()
        tasks = _DOC_TASKS if kind == "doc" else _CODE_TASKS
        task = rng.choice(sorted(tasks))
        module = cand.id.split(":")[0]
        text = tasks[task].format(module=module, passage=cand.text)
        picked.append(TextPrompt(f"grounded-{len(picked)}", "grounded", task, cand.source, text))
    return picked


def prompt_sets(names: Sequence[str], n: int, seed: int = 0) -> list[TextPrompt]:
    """``n`` prompts of each named set, set after set."""
    return [p for name in names for p in prompt_set(name, n, seed)]
