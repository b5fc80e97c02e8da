"""mmaccel.generate speaks transformers: greedy output equal to transformers' ``generate`` for every
text method (tiny random Llama / Qwen2 / GPT-2, batch 1 and 3, left padding, EOS), defaults from
the model's ``generation_config``, the streamer protocol, refused keywords."""

from __future__ import annotations

import pytest
import torch

import mmaccel

from .conftest import tiny_lm

V = 40
# every text method with drafts short enough to be accepted now and then on a random model
TEXT_METHODS = [
    ("ar", {}),
    ("jacobi", {"window": 4}),
    ("sjd", {"window": 4}),
    ("sjd-coupled", {"window": 3, "init": "horizontal"}),
    ("prompt-lookup", {"window": 5}),
    ("prompt-lookup", {"window": 3, "ngram_max": 1, "ngram_min": 1}),
    ("prompt-lookup", {"window": 3, "branches": 3, "ngram_max": 2, "ngram_min": 1}),
    ("lookahead", {"window": 1, "lookahead_n": 3, "lookahead_w": 3, "lookahead_g": 2}),
    ("lookahead", {"lookahead_n": 2, "lookahead_w": 2, "lookahead_g": 3}),
]


def hf_model(arch: str, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       initializer_range=0.5, tie_word_embeddings=False)  # fmt: skip
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       initializer_range=0.5)  # fmt: skip
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                      initializer_range=0.5)  # fmt: skip
        model = transformers.GPT2LMHeadModel(cfg)
    model = model.double().eval()
    # a clean slate: no EOS / pad / sampling from the architecture's config unless a test sets them
    for name in (
        "eos_token_id",
        "pad_token_id",
        "bos_token_id",
        "do_sample",
        "top_k",
        "top_p",
        "temperature",
    ):
        setattr(model.generation_config, name, None)
    return model


def prompts(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of lengths 7, 4, 6 (the first ``batch`` of them); pad id 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 4, 6][:batch]
    ids = torch.randint(1, V, (batch, 7), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(lengths):
        mask[row, : 7 - n] = 0
        ids[row, : 7 - n] = 0
    return ids, mask


def pick_eos(model, ids, mask, new: int) -> int:
    """An EOS id that stops some row part-way (batch 1: that row) but not every row at once."""
    free = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    free = free[:, ids.shape[1] :]
    B = free.shape[0]
    for t in free[0, 3:].tolist() + list(range(1, V)):
        hits = (free[:, 1:] == t).any(1)
        if hits.any() and (B == 1 or not hits.all()):
            return t
    raise AssertionError("no usable EOS id")


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def arch_model(request):
    return request.param, hf_model(request.param)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("method", "options"), TEXT_METHODS, ids=[m for m, _ in TEXT_METHODS])
def test_greedy_equals_transformers_with_left_padding_and_eos(arch_model, batch, method, options):
    arch, model = arch_model
    ids, mask = prompts(batch)
    eos = pick_eos(model, ids, mask, 24)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=eos,
                         pad_token_id=0)  # fmt: skip
    out = mmaccel.generate(model, ids, method, attention_mask=mask, max_new_tokens=24, do_sample=False,
                           eos_token_id=eos, pad_token_id=0, **options)  # fmt: skip
    assert (out.new_tokens == eos).any(), "the test must exercise EOS"
    assert out.sequences.shape == ref.shape, (arch, method)
    assert torch.equal(out.sequences, ref), (arch, method)


def test_eos_list_stops_at_any_of_them(arch_model):
    _, model = arch_model
    ids, mask = prompts(3)
    a, b = pick_eos(model, ids, mask, 24), pick_eos(model, ids, mask[:, :], 16)
    eos = [a, (b + 1) % V or 1]
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=eos,
                         pad_token_id=0)  # fmt: skip
    out = mmaccel.generate(model, ids, "sjd", attention_mask=mask, max_new_tokens=24, do_sample=False,
                           eos_token_id=eos, pad_token_id=0, window=4)  # fmt: skip
    assert torch.equal(out.sequences, ref)


def test_defaults_follow_the_generation_config_greedy_eos_and_pad():
    model = hf_model("llama")
    ids, mask = prompts(3)
    eos = pick_eos(model, ids, mask, 20)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = 37
    model.generation_config.max_new_tokens = 20
    ref = model.generate(ids, attention_mask=mask)  # transformers: greedy, its EOS and pad
    out = mmaccel.generate(model, ids, "sjd", attention_mask=mask, window=3)
    assert (out.new_tokens == 37).any(), "a row must stop early for the pad id to show"
    assert torch.equal(out.sequences, ref)


def test_sampling_defaults_come_from_the_generation_config():
    """do_sample=True with top_k=1 in the config: sampling that can only pick the argmax, so the
    output is the greedy one; without the config's top_k it would differ."""
    model = hf_model("qwen2")
    ids, mask = prompts(3)
    greedy = mmaccel.generate(model, ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    model.generation_config.do_sample = True
    free = mmaccel.generate(model, ids, attention_mask=mask, max_new_tokens=16, seed=0)
    assert not torch.equal(free.sequences, greedy.sequences), "the config's do_sample=True must sample"
    model.generation_config.top_k = 1
    top1 = mmaccel.generate(model, ids, attention_mask=mask, max_new_tokens=16, seed=0)
    assert torch.equal(top1.sequences, greedy.sequences)
    mine = mmaccel.generate(model, ids, attention_mask=mask, max_new_tokens=16, seed=0, top_k=0)
    assert not torch.equal(mine.sequences, greedy.sequences), "the user's top_k must win over the config's"


def test_project_model_without_generation_config_still_samples_by_default():
    model = tiny_lm(vocab=32, scale=1.5)
    ids = torch.tensor([[1, 2, 3]])
    a = mmaccel.generate(model, ids, max_new_tokens=16, seed=1)
    b = mmaccel.generate(model, ids, max_new_tokens=16, seed=2)
    assert a.new_tokens.shape == (1, 16)
    assert not torch.equal(a.sequences, b.sequences)


class Collect:
    def __init__(self) -> None:
        self.events: list = []

    def put(self, value: torch.Tensor) -> None:
        self.events.append(("put", value.clone()))

    def end(self) -> None:
        self.events.append(("end", None))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("method", ["ar", "sjd"])
def test_streamer_gets_the_prompt_then_committed_tokens_in_order_then_end(method, batch):
    model = hf_model("llama")
    ids, mask = prompts(batch)
    eos = pick_eos(model, ids, mask, 20)
    streamer = Collect()
    out = mmaccel.generate(model, ids, method, attention_mask=mask, max_new_tokens=20, do_sample=False,
                           eos_token_id=eos, pad_token_id=0, streamer=streamer,
                           **({} if method == "ar" else {"window": 4}))  # fmt: skip
    kinds = [k for k, _ in streamer.events]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    puts = [v for k, v in streamer.events if k == "put"]
    assert torch.equal(puts[0], ids)  # the prompt first, as transformers does
    assert all(p.shape[0] == batch and p.shape[1] >= 1 for p in puts[1:])
    assert len(puts) > 2, "tokens must be streamed as they are committed, not all at the end"
    assert torch.equal(torch.cat(puts[1:], dim=1), out.new_tokens)


def test_transformers_text_streamer_prints_the_text(capsys):
    from transformers import TextStreamer

    class Tok:  # the part of a tokenizer TextStreamer uses
        def decode(self, ids, **kw):
            return "".join(chr(97 + i % 26) for i in ids)

    model = hf_model("gpt2")
    ids, mask = prompts(1)
    out = mmaccel.generate(model, ids, "sjd", attention_mask=mask, max_new_tokens=12, do_sample=False,
                           streamer=TextStreamer(Tok(), skip_prompt=True), window=3)  # fmt: skip
    assert capsys.readouterr().out.strip() == Tok().decode(out.new_tokens[0].tolist())


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("num_beams", 4, "num_beams"),
        ("repetition_penalty", 1.2, "repetition_penalty"),
        ("prompt_lookup_num_tokens", 10, "method='prompt-lookup'"),
        ("max_length", 30, "max_new_tokens"),
        ("logits_processor", [], "logits_processor"),
    ],
)
def test_unsupported_transformers_keywords_are_refused_by_name(keyword, value, message):
    model = hf_model("llama")
    with pytest.raises(TypeError, match=message):
        mmaccel.generate(model, torch.tensor([[1, 2]]), max_new_tokens=4, **{keyword: value})


def test_bad_streamer_and_bad_eos_are_named():
    model = hf_model("llama")
    with pytest.raises(TypeError, match="streamer must have put"):
        mmaccel.generate(model, torch.tensor([[1, 2]]), max_new_tokens=4, streamer=object())
    with pytest.raises(ValueError, match="eos_token_id must be an int or a list of ints"):
        mmaccel.generate(model, torch.tensor([[1, 2]]), max_new_tokens=4, eos_token_id="</s>")
    with pytest.raises(ValueError, match="do_sample must be True or False"):
        mmaccel.generate(model, torch.tensor([[1, 2]]), max_new_tokens=4, do_sample="yes")
