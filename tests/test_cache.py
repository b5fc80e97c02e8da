"""StaticKVCache: masks from lens_B, rows at different lengths, rollback."""

from __future__ import annotations

import torch

from mmaccel.cache import StaticKVCache

from .conftest import tiny_lm


def block_forward(model, cache, tokens_BT):
    T = tokens_BT.shape[1]
    slots = cache.slots(T)
    return model.forward(tokens_BT, slots, cache, slots, cache.attn_mask(T))


def test_mask_is_committed_prefix_plus_causal_block():
    cache = StaticKVCache(1, 2, 1, 8, 4)
    cache.lens_B[:] = torch.tensor([2, 5], dtype=torch.int32)
    mask = cache.attn_mask(3)
    expected_row0 = torch.tensor(
        [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    )
    expected_row1 = torch.tensor(
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
    )
    assert torch.equal(mask[0].long(), expected_row0)
    assert torch.equal(mask[1].long(), expected_row1)
    assert torch.equal(cache.slots(3), torch.tensor([[2, 3, 4], [5, 6, 7]]))


def test_custom_block_mask():
    cache = StaticKVCache(1, 1, 1, 6, 4)
    cache.lens_B[:] = 2
    block = torch.tensor([[[1, 0, 0], [0, 1, 0], [1, 0, 1]]], dtype=torch.bool)  # queries ignore each other
    mask = cache.attn_mask(3, block)[0].long()
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0]]))


def test_rows_at_different_lengths_match_full_forward():
    model = tiny_lm(vocab=32)
    seqs = [torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 7)]
    cache = model.new_cache(2, 16)
    padded = torch.stack([torch.nn.functional.pad(s, (0, 7 - len(s))) for s in seqs])
    with torch.no_grad():
        block_forward(model, cache, padded)
        cache.rollback(torch.tensor([3, 7], dtype=torch.int32))
        nxt = torch.tensor([[5, 6], [8, 9]])
        logits = block_forward(model, cache, nxt)
        for row, seq in enumerate(seqs):
            full = model.full_logits(torch.cat([seq, nxt[row]])[None])[0, -2:]
            torch.testing.assert_close(logits[row], full, rtol=1e-5, atol=1e-5)


def test_rollback_then_redecode_equals_never_drafting():
    model = tiny_lm(vocab=32)
    prompt = torch.tensor([[4, 8, 15, 16], [23, 1, 2, 3]])
    true_next = torch.tensor([[7, 3, 9], [2, 2, 11]])
    with torch.no_grad():
        clean = model.new_cache(2, 16)
        block_forward(model, clean, prompt)
        clean.commit(torch.tensor([4, 4]))
        expected = block_forward(model, clean, true_next)

        drafted = model.new_cache(2, 16)
        block_forward(model, drafted, prompt)
        drafted.commit(torch.tensor([4, 4]))
        saved = drafted.lens_B.clone()
        block_forward(model, drafted, torch.tensor([[31, 30, 29, 28, 27], [0, 0, 0, 0, 0]]))  # junk drafts
        drafted.commit(torch.tensor([5, 2]))
        drafted.rollback(saved)
        got = block_forward(model, drafted, true_next)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_commit_keeps_accepted_prefix_of_a_block():
    model = tiny_lm(vocab=32)
    seq = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        cache = model.new_cache(1, 16)
        block_forward(model, cache, seq[:, :3])
        cache.commit(torch.tensor([3]))
        block_forward(model, cache, torch.tensor([[4, 5, 31, 31]]))  # 4, 5 accepted, the rest rejected
        cache.commit(torch.tensor([2]))
        got = block_forward(model, cache, seq[:, 5:])
        expected = model.full_logits(seq)[:, 5:]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
