"""Crash-safe saving for training checkpoints and pre-tokenized datasets.

Owns: ``save_atomic``, ``save_safetensors``, ``export_fp16`` and ``store_test`` (an exported file's
evaluation in the json beside it), and ``read_checkpoint`` / ``check_state_dict`` (every family's loader reads
official files through it: safetensors, or a pickle with ``weights_only=True``). A run killed mid-save (a session ending, an
out-of-memory kill) must leave the previous file intact, since every training script resumes from
what it finds; exported weights must be readable by whoever the umask says may read them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAX_LISTED = 10  # keys named per kind of problem in a load error


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through ``path`` + ``.tmp`` and a rename: never a half-written ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, then the mode the umask gives any other new file.

    ``save_file`` already writes through a temporary file and a rename (so it never leaves half a
    file), but that temporary file is created 0600 whatever the umask, so weights exported on a
    shared machine were unreadable to its other users; this gives them ``0666 & ~umask``.
    """
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(path, 0o666 & ~_umask())


def export_fp16(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str], record: Any
) -> None:
    """What a trainer ships: ``tensors`` as safetensors at ``path`` (floating ones in fp16, integer
    ones as they are), ``metadata`` in its header, and ``record`` as json beside it (``.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_safetensors(sd, path, metadata)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


def read_checkpoint(path: str | os.PathLike, safe_globals: tuple = ()) -> Any:
    """The object in an official checkpoint file: ``.safetensors``, or a torch pickle read with
    ``weights_only=True`` (``safe_globals``: classes its unpickler may also build, e.g. the
    ``argparse.Namespace`` of LlamaGen's training checkpoints).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a damaged file, or one holding objects a weights-only load refuses (named).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise ValueError(f"checkpoint {path} is corrupted or truncated (safetensors: {err})") from err
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: [^.]*\.[^ ]*", str(err))
        if refused:  # a well-formed file holding objects we will not unpickle
            raise ValueError(
                f"checkpoint {path} holds Python objects a weights-only load refuses ({refused[0]})"
            ) from err
        raise ValueError(f"checkpoint {path} is corrupted or truncated (unreadable pickle)") from err
    except Exception as err:  # torch reports damage as RuntimeError, EOFError, OSError, KeyError, ...
        raise ValueError(
            f"checkpoint {path} is corrupted or truncated ({type(err).__name__}: {err})"
        ) from err


def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check_state_dict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    tolerate_shape: tuple[str, ...] = (),
) -> None:
    """Raise ``ValueError`` naming every missing, unexpected and misshapen key (with both
    shapes). Keys in ``tolerate_shape`` may differ in shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and k not in tolerate_shape and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{len(items)} {label}: {_listed(items)}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("misshapen keys", shapes),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))


def store_test(weights: Path | str, result: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    """Write an evaluation of the exported ``weights`` as ``test`` (with ``eval_seconds`` and
    ``extra``) and the file's size as ``file_bytes`` into the json beside it; returns the json."""
    path = Path(weights)
    record = json.loads(path.with_suffix(".json").read_text())
    record["test"] = {**result, "eval_seconds": round(seconds, 1), **extra}
    record["file_bytes"] = path.stat().st_size
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record
