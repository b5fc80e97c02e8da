"""``mmaccel eval text`` end to end on a tiny random Llama with a word-level tokenizer built here,
and the text prompt sets (deterministic, non-empty, traceable to files that exist)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mmaccel.eval.commands import COMMANDS
from mmaccel.eval.common import MethodSpec
from mmaccel.eval.text import HF_PLAIN, main, make_rows, run_text_benchmark, summarise, trim_at_eos
from mmaccel.text.prompts import PROMPT_SETS, open_questions, prompt_set, stdlib_dir
from mmaccel.text.smollm2 import chat_ids

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def word_tokenizer(texts: list[str]):
    """A word-level fast tokenizer over the words of ``texts``, with SmolLM2's chat tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in [*texts, "system user assistant"] for w in re.findall(r"\w+|[^\w\s]", t)})
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>")  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_chat_llama(vocab: int, eos: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      initializer_range=0.5, bos_token_id=1, eos_token_id=eos, pad_token_id=2)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, 2
    return model


@pytest.fixture(scope="module")
def prompts():
    return {name: [p.text for p in prompt_set(name, 1, 0)] for name in PROMPT_SETS}


@pytest.fixture(scope="module")
def tokenizer(prompts):
    return word_tokenizer([t for ps in prompts.values() for t in ps])


def test_prompt_sets_are_deterministic_nonempty_and_traceable():
    for name in PROMPT_SETS:
        a, b = prompt_set(name, 4, seed=3), prompt_set(name, 4, seed=3)
        assert a == b and len(a) == 4 and all(p.text.strip() for p in a)
        assert [p.text for p in a] != [p.text for p in prompt_set(name, 4, seed=4)]
    grounded = prompt_set("grounded", 6, 0)
    assert {"doc", "code"} & {p.task for p in grounded} == set()  # tasks are applied
    for p in grounded:
        path = stdlib_dir() / p.source.split()[0]
        assert path.is_file(), p.source
        # the quoted passage is the file's text (docstring paragraphs are dedented, so compare words)
        passage = p.text.split("\n\n", 1)[1].removeprefix("```python\n").removesuffix("\n```")
        assert " ".join(passage.split()[:8]) in " ".join(path.read_text(encoding="utf-8").split())
    assert len(open_questions()) >= 16
    with pytest.raises(ValueError, match="unknown prompt set"):
        prompt_set("nope", 1)


def test_chat_ids_left_pads_with_mask(tokenizer):
    ids_BT, mask_BT = chat_ids(tokenizer, ["What is the capital of France ?", "Why ?"])
    assert ids_BT.shape == mask_BT.shape and ids_BT.shape[0] == 2
    assert mask_BT[0].all() and not mask_BT[1, 0] and mask_BT[1, -1]
    assert (ids_BT[1][mask_BT[1] == 0] == tokenizer.pad_token_id).all()
    alone, _ = chat_ids(tokenizer, "Why ?")
    assert torch.equal(alone[0], ids_BT[1][mask_BT[1] == 1])
    assert tokenizer.decode(alone[0]).endswith("<|im_start|> assistant")


def test_trim_at_eos():
    assert trim_at_eos([5, 2, 7, 2], {2}) == [5, 2]
    assert trim_at_eos([5, 6], {2}) == [5, 6]


def test_eval_text_end_to_end(tmp_path: Path, tokenizer, capsys):
    """The CLI on a saved tiny model: every row, both sets, JSON and table written, greedy exact."""
    assert "text" in COMMANDS
    model = tiny_chat_llama(len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    rc = main(["--model", str(tmp_path / "model"), "--methods", "ar,sjd:window=4", "--prompts", "1",
               "--max-new-tokens", "12", "--out", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "### grounded" in printed and "### open" in printed
    result = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("### grounded")
    for name in PROMPT_SETS:
        rows = {r["row"]: r for r in result["summary"][name]["rows"]}
        assert set(rows) == {"ar", "sjd:window=4", HF_PLAIN, "transformers:prompt_lookup=10"}
        for r in rows.values():
            assert r["exact_vs_transformers_greedy"] == "1/1", r
            assert r["tokens_per_s"] > 0 and r["forwards_per_token"] > 0
            assert sum(k * n for k, n in enumerate(r["histogram"])) == r["tokens_per_prompt"]
        assert rows["ar"]["forwards_per_token"] == 1.0 and rows["ar"]["speedup_vs_ar"] == 1.0
        assert result["summary"][name]["greedy_differences"] == []
    assert result["prompts"]["grounded"][0]["source"].endswith("standard library)")


def test_eos_stops_every_row_batched(prompts, tokenizer):
    """With eos set to the 3rd greedy token, every row stops there: batch 2, left padding, both sets."""
    model = tiny_chat_llama(len(tokenizer))
    ids_BT, mask_BT = chat_ids(tokenizer, prompts["open"])
    with torch.inference_mode():
        free = model.generate(
            ids_BT, attention_mask=mask_BT, max_new_tokens=6, do_sample=False, eos_token_id=None
        )
    eos = int(free[0, ids_BT.shape[1] + 2])
    model.generation_config.eos_token_id = eos
    two = {"both": [prompts["open"][0], prompts["grounded"][0]]}
    rows = make_rows([MethodSpec("ar")], ["plain"], 10)
    calls = run_text_benchmark(model, tokenizer, two, rows, max_new_tokens=8, batch=2, warmup="none")
    by = {c.row: c for c in calls}
    assert by["ar"].new_ids == by[HF_PLAIN].new_ids
    first = by["ar"].new_ids[0]
    assert first[-1] == eos and len(first) <= 3
    summary = summarise(calls, rows, greedy=True)["both"]
    assert all(r["exact_vs_transformers_greedy"] == "2/2" for r in summary["rows"])


def test_eval_text_sampled_batch(tmp_path: Path, capsys):
    """--sample at batch 2: runs, reports no exact-match column values, leaves out transformers' prompt lookup."""
    prompts = [p.text for p in prompt_set("open", 2, 0)]
    tokenizer = word_tokenizer(prompts)
    tiny_chat_llama(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rc = main(["--model", str(tmp_path / "model"), "--methods", "ar,sjd:window=4", "--sets", "open", "--prompts", "2",
               "--batch", "2", "--sample", "--max-new-tokens", "8", "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["open"]["rows"]
    assert [r["row"] for r in rows] == ["ar", "sjd:window=4", HF_PLAIN]
    assert all(r["exact_vs_transformers_greedy"] is None and r["tokens_per_prompt"] >= 1 for r in rows)
