"""With do_sample=False every method returns exactly the greedy tokens of plain decoding."""

from __future__ import annotations

import pytest
import torch

import mmaccel

from .conftest import tiny_llama, tiny_lm

GREEDY_METHODS = [
    ("ar", {}),
    ("jacobi", {"window": 16}),
    ("sjd", {"window": 16}),
    ("sjd-coupled", {"window": 16}),
    ("sjd", {}),  # window="auto": greedy whatever window it picks
    ("jacobi", dict(window=5, init="horizontal")),
    ("sjd", dict(window=3, init="vertical", grid_width=4)),
    ("sjd-coupled", dict(window=7, init="vertical", grid_width=3)),
]


def ragged_batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 left-padded prompts of lengths 7, 5, 3, 6."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([7, 5, 3, 6]):
        mask[row, : 7 - length] = 0
        ids[row, : 7 - length] = 0
    return ids, mask


@pytest.fixture(scope="module")
def llama_and_reference():
    model = tiny_llama(vocab=64, init=0.5)
    ids, mask = ragged_batch(64)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=0)
    return model, ids, mask, ref


@pytest.mark.parametrize(("method", "options"), GREEDY_METHODS)
def test_hf_llama_greedy_equals_model_generate(llama_and_reference, method, options):
    model, ids, mask, ref = llama_and_reference
    out = mmaccel.generate(
        model, ids, method, attention_mask=mask, max_new_tokens=64, do_sample=False, **options
    )
    assert out.sequences.shape == ref.shape
    assert torch.equal(out.sequences, ref)


def naive_greedy(model, prompt: list[int], new: int) -> list[int]:
    """Greedy decoding by full re-computation every step (no cache at all)."""
    seq = list(prompt)
    for _ in range(new):
        seq.append(int(model.full_logits(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize(("method", "options"), GREEDY_METHODS)
def test_project_model_greedy_equals_uncached_reference(method, options):
    model = tiny_lm(vocab=48, scale=2.0)
    prompts = [[3, 9, 4], [7, 1, 1, 2, 30, 5]]
    ids = torch.tensor([[0, 0, 0, 3, 9, 4], [7, 1, 1, 2, 30, 5]])
    mask = (torch.arange(6)[None] >= torch.tensor([[3], [0]])).long()
    with torch.no_grad():
        expected = [naive_greedy(model, p, 40) for p in prompts]
    out = mmaccel.generate(
        model, ids, method, attention_mask=mask, max_new_tokens=40, do_sample=False, **options
    )
    assert out.new_tokens.tolist() == expected


@pytest.mark.parametrize("method", ["ar", "jacobi", "sjd", "sjd-coupled"])
def test_eos_stops_rows_independently_like_transformers(method):
    model = tiny_llama(vocab=24, init=0.5, seed=3)
    ids, mask = ragged_batch(24, seed=1)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)[:, 7:]
    # an EOS id that some rows emit (after their first token) and others never do
    eos = next(t for t in range(1, 24) if 0 < int((free[:, 1:] == t).any(1).sum()) < 4)
    ref = model.generate(
        ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    out = mmaccel.generate(
        model,
        ids,
        method,
        attention_mask=mask,
        max_new_tokens=30,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
        **({} if method == "ar" else {"window": 8}),
    )
    stopped = (out.new_tokens == eos).any(1)
    assert stopped.any() and not stopped.all()
    # transformers drops trailing all-pad columns once every row has stopped; compare the overlap
    width = ref.shape[1]
    assert torch.equal(out.sequences[:, :width], ref)
    assert (out.sequences[:, width:] == 0).all()
    first_eos = (out.new_tokens == eos).int().argmax(1)
    assert torch.equal(out.num_tokens[stopped], first_eos[stopped] + 1)
    assert (out.num_tokens[~stopped] == 30).all()


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_other_hf_decoders_greedy(arch):
    import transformers

    torch.manual_seed(0)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.5,
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.5
        )
        model = transformers.GPT2LMHeadModel(cfg)
    model = model.double().eval()
    ids, mask = ragged_batch(50)
    ref = model.generate(
        ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    for method, options in [("ar", {}), ("sjd", {"window": 8})]:
        out = mmaccel.generate(
            model, ids, method, attention_mask=mask, max_new_tokens=24, do_sample=False, **options
        )
        assert torch.equal(out.sequences, ref), method
