"""Start a training stage of the Shapes-T2I model from an earlier stage's weights.

Owns: reading the earlier weights (a training ``ckpt.pt`` or exported safetensors), placing
its layers in a deeper model (``init_layers``), and the rule of what a later stage may add:
parameters the earlier stage lacked start so that the stage begins from the earlier
function (see ``NEW_IN_LATER_STAGES``), and new layers start with zero residual branches.

Must never: load a checkpoint with unpickling (``weights_only=True``), or accept missing or
unexpected keys other than those a later stage may add.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mmaccel.image_ar.t2i_model import ShapesT2IModel

# parameters a later stage may add: zero-initialised (the stage starts from the old function),
# except that the gate starts at TrainConfig.gate_init, the cell map's MLP at its own init (it
# adds nothing while cell_embed is zero) and cell_embed at TrainConfig.cell_embed_init
CELL_MAP_PARAMS = ("gpt.cell_map.", "gpt.cell_embed.")
NEW_IN_LATER_STAGES = ("gpt.image_pos_embedding.", "gpt.condition_rope_gate", *CELL_MAP_PARAMS)
LAYERS = "gpt.layers."


def initial_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Float32 model state dict from a training ``ckpt.pt`` or an exported ``.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    if path.suffix == ".safetensors":
        return ShapesT2IModel.load(path).state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def place_layers(
    weights: dict[str, torch.Tensor], layer_map: Sequence[int | None], n_layer: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Renumber the earlier stage's ``gpt.layers.{j}.*`` to the positions ``layer_map`` gives
    them (see ``TrainConfig.init_layers``); returns the weights and the new layers' indices."""
    old_n = 1 + max(
        (int(k[len(LAYERS) :].split(".")[0]) for k in weights if k.startswith(LAYERS)), default=-1
    )
    if len(layer_map) != n_layer:
        raise ValueError(f"init_layers has {len(layer_map)} entries; the model has n_layer={n_layer}")
    if [j for j in layer_map if j is not None] != list(range(old_n)):
        raise ValueError(
            f"init_layers {list(layer_map)}: the {old_n} layers of init_from must each appear once, in order "
            f"(0..{old_n - 1}), the rest None"
        )
    out = {k: v for k, v in weights.items() if not k.startswith(LAYERS)}
    for i, j in enumerate(layer_map):
        if j is not None:
            old = f"{LAYERS}{j}."
            out.update({f"{LAYERS}{i}.{k[len(old) :]}": v for k, v in weights.items() if k.startswith(old)})
    return out, [i for i, j in enumerate(layer_map) if j is None]


def start_from(
    model: ShapesT2IModel, path: str | os.PathLike, layer_map: Sequence[int | None] | None = None
) -> list[str]:
    """Load the earlier stage at ``path`` into ``model`` (its layers placed by ``layer_map``
    when given); returns the parameter names the earlier stage did not have."""
    weights, new_layers = initial_weights(path), []
    if layer_map is not None:
        weights, new_layers = place_layers(weights, layer_map, len(model.gpt.layers))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # only parameters the earlier stage did not have may be missing; they keep their (zero) init
    may_be_new = NEW_IN_LATER_STAGES + tuple(f"{LAYERS}{i}." for i in new_layers)
    if unexpected or any(not k.startswith(may_be_new) for k in missing):
        raise ValueError(f"init_from {path}: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():  # a new layer adds nothing until its residual branches learn
        for i in new_layers:
            model.gpt.layers[i].attention.wo.weight.zero_()
            model.gpt.layers[i].feed_forward.w2.weight.zero_()
    return missing
