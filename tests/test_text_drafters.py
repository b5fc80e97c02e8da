"""Text drafters: what prompt lookup proposes, and that its drafts are really accepted."""

from __future__ import annotations

import pytest
import torch

import mmaccel
from mmaccel.cache import StaticKVCache
from mmaccel.drafters import DraftContext, PromptLookupDrafter

from .test_text_generate import hf_model


def context(prompt: list[list[int]], generated: list[list[int]], width: int = 12) -> DraftContext:
    B = len(prompt)
    P = max(len(p) for p in prompt)
    prompt_BP = torch.zeros(B, P, dtype=torch.long)
    hist_BN = torch.zeros(B, width, dtype=torch.long)
    for b in range(B):
        prompt_BP[b, : len(prompt[b])] = torch.tensor(prompt[b])
        hist_BN[b, : len(generated[b])] = torch.tensor(generated[b])
    return DraftContext(20, None, None, hist_BN, torch.tensor([len(g) for g in generated]), prompt_BP,
                        torch.tensor([len(p) for p in prompt]))  # fmt: skip


def test_prompt_lookup_copies_what_followed_the_longest_most_recent_match():
    # row 0: "5 6" occurs in the prompt followed by 7 8 9; the bigram wins over the later unigram "6 1"
    # row 1: only the unigram 4 matches, most recently followed by 2; past the text's end: the pending token
    # row 2: nothing matches: every slot is the pending token
    ctx = context([[5, 6, 7, 8, 9, 6, 1, 3], [4, 1, 4, 2], [1, 2, 3]], [[5, 6], [3, 4], [7]])
    draft = PromptLookupDrafter(window=4, ngram_max=3, ngram_min=1).start(ctx, torch.tensor([6, 4, 7]))
    assert draft.tokens_BK.tolist() == [[7, 8, 9, 6], [2, 3, 4, 4], [7, 7, 7, 7]]
    assert torch.equal(draft.q_BKV.argmax(-1), draft.tokens_BK) and torch.equal(
        draft.q_BKV.sum(-1), torch.ones(3, 4)
    )


def test_ngram_min_refuses_short_matches():
    ctx = context([[4, 1, 4, 2]], [[3, 4]])
    draft = PromptLookupDrafter(window=2, ngram_max=3, ngram_min=2).start(ctx, torch.tensor([4]))
    assert draft.tokens_BK.tolist() == [[4, 4]]


class Bigram(torch.nn.Module):
    """A project model whose next token depends only on the last one (``perm[x]``): its text is
    one cycle of ``perm``, so after one turn everything it writes is a copy."""

    family, grid_width, max_seq_len, device = "bigram", None, 512, torch.device("cpu")

    def __init__(self, vocab: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab
        self.register_buffer("perm", torch.randperm(vocab, generator=g))
        self.register_buffer("noise", torch.rand(vocab, vocab, generator=g))

    def new_cache(self, batch: int, capacity: int) -> StaticKVCache:
        return StaticKVCache(1, batch, 1, capacity, 1)

    def forward(self, tokens_BT, pos_BT, cache, slots_BT, mask_BTS):
        return (
            4.0 * torch.nn.functional.one_hot(self.perm[tokens_BT], self.vocab_size) + self.noise[tokens_BT]
        )


@pytest.mark.parametrize("window", [3, 8])
def test_prompt_lookup_drafts_are_accepted_on_copied_text(window):
    model = Bigram()
    ids = torch.tensor([[1, 2, 3]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=40, do_sample=False)
    out = mmaccel.generate(model, ids, "prompt-lookup", max_new_tokens=40, do_sample=False, window=window)
    assert torch.equal(out.sequences, ar.sequences)
    assert ar.num_forward_passes == 40
    # one turn of the cycle (at most 16 tokens) one by one, then window + 1 tokens per forward
    assert out.num_forward_passes <= 16 + (40 - 16) / (window + 1) + 2, out.accepted_histogram


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(ngram_max=0), "ngram_max must be an integer >= 1"),
        (dict(ngram_min=3, ngram_max=2), r"ngram_min \(3\) must be <= ngram_max \(2\)"),
        (dict(init="random"), "does not take option"),
        (dict(window=-1), "window must be an integer >= 0"),
    ],
)
def test_prompt_lookup_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        mmaccel.generate(
            hf_model("llama"), torch.tensor([[1, 2]]), "prompt-lookup", max_new_tokens=4, **options
        )


class Counter(Bigram):
    """Writes its own position as the next token: the text never repeats, so prompt lookup
    finds nothing and every draft is rejected."""

    def forward(self, tokens_BT, pos_BT, cache, slots_BT, mask_BTS):
        return 4.0 * torch.nn.functional.one_hot((pos_BT + 1) % self.vocab_size, self.vocab_size).float()


def test_auto_window_settles_on_plain_decoding_when_drafts_are_never_accepted():
    model = Counter(vocab=128)
    ids = torch.tensor([[120, 121, 122]])
    first = mmaccel.generate(model, ids, "prompt-lookup", max_new_tokens=60, do_sample=False)
    assert first.new_tokens[0].tolist() == list(range(3, 63))
    if first.method.window > 0:  # the prior was optimistic: what it measured must now rule it out
        assert max(i for i, c in enumerate(first.accepted_histogram) if c) == 1
    again = mmaccel.generate(model, ids, "prompt-lookup", max_new_tokens=60, do_sample=False)
    assert again.method.window == 0
    assert again.num_forward_passes == 60
