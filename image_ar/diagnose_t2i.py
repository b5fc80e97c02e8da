"""Teacher-forced diagnostics of how a Shapes-T2I model uses its caption.

Owns two probes on test-split scenes (exact figures behind ``image_ar/configs/README.md``):

- ``binding_costs``: on two-object scenes, the nats per image the model loses when the
  caption's two objects swap positions ("swap": does it know which object is where?), when
  the first object moves to a free cell ("move": does it know which cells hold objects?),
  when the two objects swap colours in place ("colour_swap": is each colour bound to its
  object?), when the first object takes a colour the scene does not show ("recolour") and
  when it takes another shape ("reshape"); with a cell map also in cells-only mode (null
  caption in the slots, own cell vectors: what the map alone carries).
- ``caption_worth``: null-caption loss minus own-caption loss per image, and the share of it
  in the tokens where objects first show (``shapes.reveal_token_mask``) and in the objects'
  own tokens (``shapes.object_token_mask``).

Run:  python -m mmaccel.image_ar.diagnose_t2i --weights image_ar/weights/shapes_t2i.safetensors

Must never: train or modify the model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mmaccel.image_ar.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Scene,
    caption,
    object_token_mask,
    reveal_token_mask,
    sample_item,
    to_tensor,
)
from mmaccel.image_ar.t2i_model import ShapesT2IModel

EDITS = ("swap", "move", "colour_swap", "recolour", "reshape")


def held_out_scenes(n: int, objects: int | None = None, seed: int = 3) -> tuple[list[Scene], torch.Tensor]:
    """The first ``n`` test-split scenes (with exactly ``objects`` objects if given) and their
    images ``[n, 3, 64, 64]`` in the VQ's input range."""
    scenes, images = [], []
    index = 0
    while len(scenes) < n:
        scene, image = sample_item(index, seed=seed, split="test")
        index += 1
        if objects is None or len(scene.objects) == objects:
            scenes.append(scene)
            images.append(to_tensor(image))
    return scenes, torch.stack(images)


@torch.no_grad()
def token_nats(
    model: ShapesT2IModel, captions: Sequence[str], tokens_BN: torch.Tensor, mode: str = "full"
) -> torch.Tensor:
    """Per-token cross-entropy ``[B, N]`` (nats) of ``tokens_BN`` under ``captions``; ``mode``
    is ``full``, ``null`` (null caption) or ``cells-only``."""
    if mode not in ("full", "null", "cells-only"):
        raise ValueError(f"mode must be 'full', 'null' or 'cells-only', got {mode!r}")
    words_BL, _ = model.tokenize(captions)
    flags_B = torch.ones(len(captions), dtype=torch.bool)
    logits_BNV = model(
        words_BL, tokens_BN, flags_B if mode == "null" else None, flags_B if mode == "cells-only" else None
    )
    nats = F.cross_entropy(logits_BNV.flatten(0, 1).float(), tokens_BN.flatten().long(), reduction="none")
    return nats.view(tokens_BN.shape)


def swapped(scene: Scene) -> Scene:
    """The two-object scene with its objects' positions exchanged."""
    a, b = scene.objects
    return Scene(scene.background, (replace(a, position=b.position), replace(b, position=a.position)))


def _first_object_with(
    scene: Scene, attribute: str, options: Sequence[str], rng: np.random.Generator
) -> Scene:
    """The scene with its first object's ``attribute`` set to one of ``options``, drawn by ``rng``."""
    first, *rest = scene.objects
    return Scene(
        scene.background, (replace(first, **{attribute: options[rng.integers(len(options))]}), *rest)
    )


def moved(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with its first object moved to a cell no object holds."""
    taken = {obj.position for obj in scene.objects}
    return _first_object_with(scene, "position", [p for p in POSITIONS if p not in taken], rng)


def colour_swapped(scene: Scene) -> Scene:
    """The two-object scene with its objects' colours exchanged (positions, shapes kept)."""
    a, b = scene.objects
    return Scene(scene.background, (replace(a, colour=b.colour), replace(b, colour=a.colour)))


def recoloured(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with its first object in a colour neither the background nor any object has."""
    shown = {scene.background, *(obj.colour for obj in scene.objects)}
    return _first_object_with(scene, "colour", [c for c in COLOURS if c not in shown], rng)


def reshaped(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with its first object in another shape."""
    return _first_object_with(scene, "shape", [s for s in SHAPES if s != scene.objects[0].shape], rng)


def binding_costs(model: ShapesT2IModel, scenes: Sequence[Scene], tokens_BN: torch.Tensor) -> dict:
    """``{mode: {"own_nats_per_token", "<edit>_nats_per_image" for each of EDITS}}`` over
    two-object ``scenes`` and their image tokens; modes ``full`` and, with a cell map,
    ``cells-only``."""
    if any(len(s.objects) != 2 for s in scenes):
        raise ValueError("binding_costs needs two-object scenes")
    rng = np.random.default_rng(0)
    variants = {
        "own": [caption(s) for s in scenes],
        "swap": [caption(swapped(s)) for s in scenes],
        "move": [caption(moved(s, rng)) for s in scenes],
        "colour_swap": [caption(colour_swapped(s)) for s in scenes],
        "recolour": [caption(recoloured(s, rng)) for s in scenes],
        "reshape": [caption(reshaped(s, rng)) for s in scenes],
    }
    modes = ["full"] + (["cells-only"] if model.cfg.gpt.condition_cell_map else [])
    out = {}
    for mode in modes:
        per_image = {k: token_nats(model, v, tokens_BN, mode).sum(1) for k, v in variants.items()}
        out[mode] = {"own_nats_per_token": per_image["own"].mean().item() / tokens_BN.shape[1]}
        for edit in EDITS:
            out[mode][f"{edit}_nats_per_image"] = (per_image[edit] - per_image["own"]).mean().item()
    return out


def caption_worth(
    model: ShapesT2IModel, scenes: Sequence[Scene], tokens_BN: torch.Tensor, reveal_rows: int = 3
) -> dict:
    """Null-caption minus own-caption nats per image, and the shares of it in the reveal
    tokens and in the objects' own tokens (with their counts per image)."""
    captions = [caption(s) for s in scenes]
    worth_BN = token_nats(model, captions, tokens_BN, "null") - token_nats(model, captions, tokens_BN)
    grid = model.cfg.gpt.grid_size
    reveal_BN = torch.from_numpy(np.stack([reveal_token_mask(s, grid, reveal_rows) for s in scenes]))
    object_BN = torch.from_numpy(np.stack([object_token_mask(s, grid) for s in scenes]))
    total = worth_BN.sum()
    B = len(scenes)
    return {
        "nats_per_image": total.item() / B,
        "first_token_nats": worth_BN[:, 0].mean().item(),
        "reveal_share": (worth_BN[reveal_BN].sum() / total).item(),
        "reveal_tokens_per_image": reveal_BN.sum().item() / B,
        "object_share": (worth_BN[object_BN].sum() / total).item(),
        "object_tokens_per_image": object_BN.sum().item() / B,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="How a Shapes-T2I model uses its caption (teacher-forced).")
    parser.add_argument("--weights", default="image_ar/weights/shapes_t2i.safetensors")
    parser.add_argument("--vq", default="image_ar/weights/vq_tiny.safetensors")
    parser.add_argument("--n", type=int, default=128, help="scenes per probe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(args.threads)
    from mmaccel.image_ar.train_vq import load_trained_vq

    model = ShapesT2IModel.load(args.weights).eval()
    vq = load_trained_vq(args.vq)
    with torch.no_grad():
        two, images = held_out_scenes(args.n, objects=2)
        report = {"binding": binding_costs(model, two, vq.encode(images).long())}
        every, images = held_out_scenes(args.n)
        report["caption_worth"] = caption_worth(model, every, vq.encode(images).long())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
