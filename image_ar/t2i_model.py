"""The embedded default text-to-image model: Shapes-T2I caption encoder + LlamaGen t2i GPT.

Owns: ``ShapesT2IConfig`` (a frozen pair of ``CaptionEncoderConfig`` and a t2i ``GPTConfig``),
``ShapesT2IModel`` (captions -> condition vectors -> the GPT), its teacher-forced training
forward with classifier-free-guidance dropout, and the weights file format: one fp16
``.safetensors`` whose GPT keys are the official LlamaGen names (``tok_embeddings.weight``,
``layers.{i}...``, ``cls_embedding.cap_proj...``) and whose caption-encoder keys are prefixed
``caption_encoder.``, plus a ``.json`` beside it with the config (and any metadata, such as
the command that trained the weights).

The GPT is the engine's ``CausalLM`` (``model.gpt``); condition vectors for its L condition
slots come from ``encode_captions`` (or ``null_cond_embs`` for the unconditional CFG rows).

Must never: print, keep state between calls, or change the GPT's official key names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.caption_encoder import CaptionEncoder, CaptionEncoderConfig, tokenize
from mmaccel.image_ar.checkpoint import save_safetensors
from mmaccel.image_ar.llamagen.config import GPTConfig
from mmaccel.image_ar.llamagen.gpt import GPT
from mmaccel.image_ar.llamagen.loader import check_state_dict, load_state_dict

log = logging.getLogger(__name__)

CAPTION_PREFIX = "caption_encoder."
FORMAT = "shapes-t2i/v1"
WEIGHTS_NAME = "shapes_t2i.safetensors"


@dataclasses.dataclass(frozen=True)
class ShapesT2IConfig:
    """Caption encoder and GPT sizes; the two must agree on slots and feature width.

    ``gpt.cls_token_num == gpt.caption_len == caption.seq_len`` (every caption slot is a
    condition slot, see ``mmaccel.image_ar.caption_encoder``) and ``gpt.caption_dim == caption.dim``.
    """

    gpt: GPTConfig
    caption: CaptionEncoderConfig

    def __post_init__(self) -> None:
        g, c = self.gpt, self.caption
        if g.model_type != "t2i":
            raise ValueError(f"ShapesT2I needs a t2i GPT, got model_type={g.model_type!r}")
        if not g.cls_token_num == g.caption_len == c.seq_len:
            raise ValueError(
                f"cls_token_num ({g.cls_token_num}), caption_len ({g.caption_len}) and the caption "
                f"encoder's seq_len ({c.seq_len}) must be equal"
            )
        if g.caption_dim != c.dim:
            raise ValueError(f"GPT caption_dim {g.caption_dim} != caption encoder dim {c.dim}")

    def to_dict(self) -> dict[str, Any]:
        return {"gpt": dataclasses.asdict(self.gpt), "caption": dataclasses.asdict(self.caption)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapesT2IConfig:
        try:
            return cls(gpt=GPTConfig(**d["gpt"]), caption=CaptionEncoderConfig(**d["caption"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a ShapesT2I config ({type(err).__name__}: {err}): {dict(d)}") from err


def t2i_config(
    dim: int = 256,
    n_layer: int = 8,
    n_head: int = 8,
    caption_len: int = 24,
    caption_dim: int = 128,
    **gpt_kw: Any,
) -> ShapesT2IConfig:
    """A ShapesT2I config: the t2i GPT (1024 codes, 16x16 grid) and its caption encoder."""
    gpt = GPTConfig(
        dim=dim,
        n_layer=n_layer,
        n_head=n_head,
        model_type="t2i",
        vocab_size=gpt_kw.pop("vocab_size", 1024),
        block_size=gpt_kw.pop("block_size", 256),
        cls_token_num=caption_len,
        caption_len=caption_len,
        caption_dim=caption_dim,
        **gpt_kw,
    )
    return ShapesT2IConfig(gpt=gpt, caption=CaptionEncoderConfig(seq_len=caption_len, dim=caption_dim))


class ShapesT2IWeights(nn.Module):
    """A view sharing the model's submodules, named as in the weights file."""

    def __init__(self, model: ShapesT2IModel) -> None:
        super().__init__()
        for name, child in model.gpt.named_children():
            self.add_module(name, child)
        for name, param in model.gpt.named_parameters(recurse=False):  # e.g. condition_rope_gate
            self.register_parameter(name, param)
        self.add_module(CAPTION_PREFIX.rstrip("."), model.caption_encoder)


class ShapesT2IModel(nn.Module):
    """Caption encoder + LlamaGen t2i GPT (``self.gpt`` is the engine's ``CausalLM``)."""

    def __init__(self, cfg: ShapesT2IConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.caption_encoder = CaptionEncoder(cfg.caption)
        self.gpt = GPT(cfg.gpt)

    # --- conditions -------------------------------------------------------------------------

    def encode_captions(self, captions: Sequence[str]) -> tuple[torch.Tensor, list[list[str]]]:
        """Condition vectors ``[B, L, dim]`` for the GPT's L condition slots, and per caption
        the words that were dropped (unknown, or past the slot limit) so the caller can warn."""
        feats_BLK, dropped = self.caption_encoder.encode(captions)
        return self.gpt.condition_embeddings(feats_BLK), dropped

    def null_cond_embs(self, batch: int) -> torch.Tensor:
        """Condition vectors ``[batch, L, dim]`` of the null caption (the CFG unconditional rows)."""
        return self.gpt.condition_embeddings(self.gpt.null_condition(batch))

    # --- training -----------------------------------------------------------------------------

    def forward(
        self,
        word_ids_BL: torch.Tensor,
        image_tokens_BN: torch.Tensor,
        drop_B: torch.Tensor | None = None,
        cells_only_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits ``[B, N, V]``: row i predicts image token i from the caption
        and tokens ``< i`` (equal to ``gpt.full_logits(...)[:, :N]``).

        ``word_ids_BL`` comes from ``caption_encoder.tokenize``; ``drop_B`` (bool) replaces a
        row's caption by the null caption (CFG dropout, as official training).
        ``cells_only_B`` (bool, needs ``condition_cell_map``) gives a row the null caption in
        its condition slots but keeps the cell vectors its own caption makes, so the cell map
        is that row's only view of the caption (``TrainConfig.cell_only_prob``).
        """
        cond_embs_BLC = self.gpt.condition_embeddings(self.caption_encoder(word_ids_BL), drop_B)
        cells_BKC = None
        if cells_only_B is not None:
            if not self.cfg.gpt.condition_cell_map:
                raise ValueError("cells_only_B needs a model with condition_cell_map")
            cells_BKC = self.gpt.cell_vectors(cond_embs_BLC)
            null_BLC = self.null_cond_embs(cond_embs_BLC.shape[0])
            cond_embs_BLC = torch.where(cells_only_B.bool()[:, None, None], null_BLC, cond_embs_BLC)
        B, N, L = image_tokens_BN.shape[0], image_tokens_BN.shape[1], self.gpt.cls_token_num
        T = L + N - 1  # the last image token is only a target
        tokens_BT = torch.cat([image_tokens_BN.new_zeros(B, L), image_tokens_BN[:, :-1]], dim=1).long()
        pos_BT = torch.arange(T, device=tokens_BT.device).expand(B, T)
        mask_BTS = torch.ones(T, T, dtype=torch.bool, device=tokens_BT.device).tril()[None].expand(B, T, T)
        logits_BTV = self.gpt(tokens_BT, pos_BT, None, None, mask_BTS, cond_embs_BLC, cells_BKC)
        return logits_BTV[:, L - 1 :]

    def loss(
        self,
        word_ids_BL: torch.Tensor,
        image_tokens_BN: torch.Tensor,
        drop_B: torch.Tensor | None = None,
        weights_BN: torch.Tensor | None = None,
        cells_only_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over all image tokens; with ``weights_BN`` the
        weighted mean (sum of w * loss over sum of w). ``drop_B`` and ``cells_only_B`` as in
        ``forward``."""
        logits_BNV = self.forward(word_ids_BL, image_tokens_BN, drop_B, cells_only_B)
        if weights_BN is None:
            return F.cross_entropy(logits_BNV.flatten(0, 1).float(), image_tokens_BN.flatten().long())
        loss_BN = F.cross_entropy(
            logits_BNV.flatten(0, 1).float(), image_tokens_BN.flatten().long(), reduction="none"
        )
        weights_N = weights_BN.flatten().to(loss_BN.dtype)
        return (loss_BN * weights_N).sum() / weights_N.sum()

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, list[list[str]]]:
        """Word ids ``[B, L]`` for ``forward`` and the words dropped from each caption."""
        return tokenize(captions, self.cfg.caption.seq_len)

    # --- weights file -------------------------------------------------------------------------

    def file_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in the file's naming (official GPT keys + ``caption_encoder.*``)."""
        return ShapesT2IWeights(self).state_dict()

    def save(
        self, dir_or_path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
    ) -> tuple[Path, Path]:
        """Write fp16 ``.safetensors`` + ``.json`` (config and ``metadata``); return both paths.

        A directory gets ``shapes_t2i.safetensors``; a ``*.safetensors`` path is used as is.
        """
        path = Path(dir_or_path)
        if path.suffix != ".safetensors":
            path = path / WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.file_state_dict().items()}
        save_safetensors(sd, path, metadata={"format": FORMAT})
        json_path = path.with_suffix(".json")
        doc = {"format": FORMAT, "config": self.cfg.to_dict(), **(dict(metadata) if metadata else {})}
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        return path, json_path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        config: ShapesT2IConfig | None = None,
    ) -> ShapesT2IModel:
        """A saved model in eval mode, weights cast to ``dtype``.

        ``path`` is the ``.safetensors`` file or its directory; the config comes from the
        ``.json`` beside it unless ``config`` is given.

        Raises:
            FileNotFoundError: no weights (or no json and no ``config``).
            ValueError: the file is damaged, the json is not a ShapesT2I config, or keys are
                missing, unexpected or misshapen (each one named).
        """
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_NAME
        if config is None:
            json_path = path.with_suffix(".json")
            if not json_path.exists():
                raise FileNotFoundError(f"config {json_path} not found (pass config= to load without it)")
            doc = json.loads(json_path.read_text())
            if doc.get("format") != FORMAT or "config" not in doc:
                raise ValueError(f"{json_path} is not a {FORMAT} config (format={doc.get('format')!r})")
            config = ShapesT2IConfig.from_dict(doc["config"])
        sd = load_state_dict(path)
        with torch.device("meta"):  # no random init of weights we are about to overwrite
            model = cls(config)
        layout = ShapesT2IWeights(model)
        check_state_dict(layout, sd, f"checkpoint {path}")
        model = model.to_empty(device=device).to(dtype)
        ShapesT2IWeights(model).load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
        log.info("loaded ShapesT2IModel from %s (%d tensors, %s)", path, len(sd), dtype)
        return model.eval()
