"""Text drafters: what prompt lookup proposes, and that its drafts are really accepted."""

from __future__ import annotations

import pytest
import torch

import mmaccel
from mmaccel.cache import StaticKVCache
from mmaccel.drafters import DraftContext, LookaheadDrafter, PromptLookupDrafter

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
    assert draft.length_B.tolist() == [4, 3, 0]  # copied tokens (the rest is filler)
    assert draft.q_BKV is None  # one-hot at the drafts: the step builds it for what it verifies


def test_branches_copy_continuations_that_start_differently():
    # after "1": the bigram "2 1" is nowhere, the unigram 1 is followed by 5 (latest), 5 again, then 3
    ctx = context([[1, 3, 4, 1, 5, 6, 1, 5, 7, 2]], [[1]])
    draft = PromptLookupDrafter(window=2, ngram_max=2, ngram_min=1, branches=3).start(ctx, torch.tensor([1]))
    # branch 0: the most recent 1 -> 5 7; branch 1: the best other first token -> 3 4; branch 2: none
    assert draft.tokens_BK.tolist() == [[5, 7, 3, 4, 1, 1]]
    assert draft.length_B.tolist() == [2]


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


def test_a_step_with_nothing_to_copy_verifies_no_draft():
    # the text never repeats: prompt lookup copies nothing, so every step is a one-token step,
    # whether the window is pinned or auto
    model = Counter(vocab=128)
    ids = torch.tensor([[120, 121, 122]])
    for window in (8, "auto"):
        out = mmaccel.generate(model, ids, "prompt-lookup", max_new_tokens=60, do_sample=False, window=window)
        assert out.new_tokens[0].tolist() == list(range(3, 63))
        assert out.num_forward_passes == 60 and out.accepted_histogram[2:] == [0] * (
            len(out.accepted_histogram) - 2
        )
    assert out.method.window == "auto"


def test_variable_steps_verify_only_the_copied_prefix():
    # window 8, but a copied continuation shorter than 8 must not be padded to 8: the bigram
    # model's cycle is copied in full, so forwards are as few as with the window, and the
    # output is the greedy one
    model = Bigram()
    ids = torch.tensor([[1, 2, 3]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=40, do_sample=False)
    for window in (8, "auto"):
        out = mmaccel.generate(model, ids, "prompt-lookup", max_new_tokens=40, do_sample=False, window=window)
        assert torch.equal(out.sequences, ar.sequences)


def test_a_branch_other_than_the_first_is_kept_and_its_cache_entries_moved():
    # the prefill writes c1; the latest c1 is followed by z (wrong), an earlier one by c2 c3 c4
    # (what the bigram model writes): branch 1 is kept whole, from slots that branch 0 did not use
    model = Bigram(seed=1)  # its cycle through 0 is 8 tokens long
    c = [0]
    for _ in range(6):
        c.append(int(model.perm[c[-1]]))
    assert len(set(c)) == len(c), "the test needs a cycle of at least 7 tokens"
    z = next(t for t in range(16) if t not in c)
    ids = torch.tensor([[c[1], c[2], c[3], c[4], c[5], c[1], z, c[0]]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=12, do_sample=False)
    one = mmaccel.generate(
        model, ids, "prompt-lookup", max_new_tokens=12, do_sample=False, window=3, ngram_max=1
    )
    two = mmaccel.generate(model, ids, "prompt-lookup", max_new_tokens=12, do_sample=False, window=3, ngram_max=1,
                           branches=2)  # fmt: skip
    assert torch.equal(one.sequences, ar.sequences) and torch.equal(two.sequences, ar.sequences)
    # the first verify step keeps c2 c3 c4 (branch 1) plus the bonus; with one branch, z is rejected
    assert two.token_forward_index[0, :5].tolist() == [0, 1, 1, 1, 1]
    assert one.token_forward_index[0, :3].tolist() == [0, 1, 2]


def test_lookahead_learns_the_cycle_from_its_jacobi_window_and_equals_greedy():
    # the prompt holds nothing of the cycle: the pool fills from the Jacobi trajectory, then
    # candidates are kept; the output is the greedy one (batch 1 and 2)
    model = Bigram(seed=1)
    ids = torch.tensor([[3, 3, 3], [3, 3, 3]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=40, do_sample=False)
    out = mmaccel.generate(model, ids, "lookahead", max_new_tokens=40, do_sample=False, window=1,
                           lookahead_n=3, lookahead_w=4, lookahead_g=2)  # fmt: skip
    assert torch.equal(out.sequences, ar.sequences)
    # ar needs 40 forwards; once the pool holds the cycle's 3-grams, steps emit 3 tokens
    assert out.num_forward_passes <= 25 and out.accepted_histogram[3] >= 10, out.accepted_histogram


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lookahead_n=1), "lookahead_n must be an integer >= 2"),
        (dict(lookahead_n=4, lookahead_w=2), r"lookahead_w \(2\) must be >= lookahead_n - 1 \(3\)"),
        (dict(lookahead_g=0), "lookahead_g must be an integer >= 1"),
        (dict(ngram_max=2), "does not take option"),
    ],
)
def test_lookahead_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        mmaccel.generate(hf_model("llama"), torch.tensor([[1, 2]]), "lookahead", max_new_tokens=4, **options)


def most_recent_distinct(text: list[int], n: int, g: int) -> dict[int, list[tuple[int, ...]]]:
    """Per first token, its g most recently seen distinct continuations, oldest first."""
    pools: dict[int, list[tuple[int, ...]]] = {}
    for j in range(len(text) - n + 1):
        kept = pools.setdefault(text[j], [])
        value = tuple(text[j + 1 : j + n])
        if value in kept:
            kept.remove(value)
        kept.append(value)
        del kept[:-g]
    return pools


@pytest.mark.parametrize(("n", "g"), [(2, 2), (3, 2), (4, 3), (2, 4)])
def test_lookahead_pool_starts_with_the_prompts_most_recent_distinct_ngrams(n, g):
    torch.manual_seed(n * 10 + g)
    vocab, B, P = 5, 3, 60
    prompt, lens = torch.randint(0, vocab, (B, P)), torch.tensor([60, 41, 23])
    ctx = DraftContext(vocab, None, None, torch.randint(0, vocab, (B, 8)), torch.ones(B, dtype=torch.long), prompt,
                       lens)  # fmt: skip
    drafter = LookaheadDrafter(n=n, w=max(n - 1, 2), g=g)
    drafter.start(ctx, torch.zeros(B, dtype=torch.long))
    for r in range(B):
        expected = most_recent_distinct(prompt[r, : lens[r]].tolist() + [int(ctx.history_BN[r, 0])], n, g)
        for key in range(vocab):
            stored = [
                tuple(drafter.pool_BVGn[r, key, i].tolist()) for i in range(int(drafter.count_BV[r, key]))
            ]
            assert stored == expected.get(key, []), (r, key)
