"""LlamaGen GPT configuration and the official model sizes, as data.

Owns: ``GPTConfig`` (field names follow the official ``ModelArgs`` of
FoundationVision/LlamaGen ``autoregressive/models/gpt.py``; training-only dropouts omitted),
the derived sizes every module reads (head dim, SwiGLU width, grid), and ``GPT_PRESETS``
(the official ``GPT_models`` table).

Must never: import torch modules or build a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is ``>= n``."""
    return n if n % k == 0 else n + k - n % k


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a LlamaGen GPT.

    Args:
        dim, n_layer, n_head: width, depth, query heads.
        n_kv_head: key/value heads (None = ``n_head``).
        multiple_of, ffn_dim_multiplier: SwiGLU width rule (see ``ffn_hidden_dim``).
        rope_base, norm_eps, initializer_range: as official.
        vocab_size: image codebook size.
        cls_token_num: condition slots L (1 for c2i, 120 for t2i).
        model_type: "c2i" (class ids) or "t2i" (caption features).
        num_classes: c2i classes; the null class is index ``num_classes``.
        caption_dim: t2i caption feature width (flan-t5-xl: 2048).
        caption_len: rows of the t2i null caption ``uncond_embedding`` (official: fixed 120).
        class_dropout_prob: > 0 adds the null-class row (c2i) as in official training.
        block_size: image tokens per sample, a square (256 = 16 x 16).
        image_pos_embedding: NOT in official LlamaGen (keep False to load its checkpoints):
            a learned absolute embedding per image position, added to the token embedding.
            Official models know where a token is only through relative 2D RoPE; a tiny
            model trained briefly could not place objects where the caption says without it.
        condition_rope_gate: NOT in official LlamaGen (keep False to load its checkpoints):
            a learned scalar g, zero at init, that condition slots use as their RoPE row
            (cos = g, sin = 0) instead of the official all-zero row. At g = 0 the model is the
            official one; g != 0 gives condition queries and keys back, so image tokens can
            attend to one caption slot rather than to the mean of all of them.
        condition_cell_map: NOT in official LlamaGen (keep 0 to load its checkpoints): n > 0
            splits the image into n x n cells and adds to each image token's input a vector
            for the cell of the token it predicts ("what belongs where I draw next"). An MLP
            reads all L condition slots (each layer-normalised, concatenated) and gives each
            cell a code of ``condition_cell_code`` numbers in (0, 1) (sigmoid); one linear map,
            shared by all cells and zero at init, turns a code into the vector, so a model
            gains the map without changing its function. Through the official path every
            image token sees the caption only as one average of the slots, and a tiny model
            did not learn to bind two objects' attributes to their places from it; the MLP
            can be pretrained to read the layout into the code (``mmaccel.image_ar.cell_map``).
        condition_cell_code: the size of a cell's code (16 for Shapes-T2I: colour, shape and
            size of the object in the cell, each with an "empty" value).
        condition_cell_read: how image tokens read a cell's code logits. "sigmoid" (stages
            10-14): each number through a sigmoid. "onehot": the code splits into the groups
            ``condition_cell_groups`` (the map is pretrained with a softmax per group) and each
            group reads as the one-hot of its largest logit; index 0 of the first group means
            "empty cell", and then every group reads its index 0. Sigmoids of softmax-trained
            logits are not one-hot: a cell often read both "empty" and a colour near 1, or
            several shapes at once (measured on stage 14), and the GPT drew from that blur.
        condition_cell_groups: the sizes of the code's one-hot groups (Shapes-T2I: colour,
            shape, size, each with "empty": 9, 4, 3); needed by ``condition_cell_read`` "onehot".
        condition_cell_lookahead: k >= 0 token rows: the vector is that of the cell holding
            the token k rows below the one predicted (clamped to the last row). With a
            tokenizer whose receptive field is wider than a patch, an object shows in the
            token rows above it, mostly in the cell above its own; with k = 0 the map told
            those tokens "empty" and a GPT trained with it did not use it.
    """

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    vocab_size: int = 16384
    cls_token_num: int = 1
    model_type: str = "c2i"
    num_classes: int = 1000
    caption_dim: int = 2048
    caption_len: int = 120
    class_dropout_prob: float = 0.1
    block_size: int = 256
    image_pos_embedding: bool = False
    condition_rope_gate: bool = False
    condition_cell_map: int = 0
    condition_cell_code: int = 16
    condition_cell_lookahead: int = 0
    condition_cell_read: str = "sigmoid"
    condition_cell_groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.model_type not in ("c2i", "t2i"):
            raise ValueError(f"model_type must be 'c2i' or 't2i', got {self.model_type!r}")
        if not isinstance(self.condition_cell_map, int) or not 0 <= self.condition_cell_map <= self.grid_size:
            raise ValueError(
                f"condition_cell_map must be an integer in [0, {self.grid_size}] (cells per side), "
                f"got {self.condition_cell_map!r}"
            )
        if not isinstance(self.condition_cell_lookahead, int) or self.condition_cell_lookahead < 0:
            raise ValueError(
                f"condition_cell_lookahead must be an integer >= 0 (token rows), got {self.condition_cell_lookahead!r}"
            )
        if self.condition_cell_read not in ("sigmoid", "onehot"):
            raise ValueError(
                f"condition_cell_read must be 'sigmoid' or 'onehot', got {self.condition_cell_read!r}"
            )
        groups = tuple(self.condition_cell_groups)  # json gives a list
        object.__setattr__(self, "condition_cell_groups", groups)
        if self.condition_cell_read == "onehot" and (
            not groups
            or not all(isinstance(g, int) and g >= 2 for g in groups)
            or sum(groups) != self.condition_cell_code
        ):
            raise ValueError(
                f"condition_cell_read 'onehot' needs condition_cell_groups of integers >= 2 summing "
                f"to condition_cell_code={self.condition_cell_code}, got {self.condition_cell_groups!r}"
            )
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_kv_head {self.kv_heads}")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if self.grid_size**2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square grid")
        if self.model_type == "c2i" and self.cls_token_num != 1:
            # the official LabelEmbedder yields one vector; more slots would have no input
            raise ValueError(f"c2i uses exactly one condition slot, got cls_token_num={self.cls_token_num}")
        if self.model_type == "t2i" and not 1 <= self.cls_token_num <= self.caption_len:
            raise ValueError(f"t2i cls_token_num must be in [1, caption_len={self.caption_len}]")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return round(self.block_size**0.5)

    @property
    def max_seq_len(self) -> int:
        return self.cls_token_num + self.block_size

    @property
    def ffn_hidden_dim(self) -> int:
        """Official rule: int(2/3 * 4 dim), times the multiplier, rounded up to ``multiple_of``."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


# (n_layer, n_head, dim) of the official GPT_models table; every other field is the default.
GPT_PRESETS: dict[str, GPTConfig] = {
    "GPT-B": GPTConfig(n_layer=12, n_head=12, dim=768),
    "GPT-L": GPTConfig(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": GPTConfig(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": GPTConfig(n_layer=48, n_head=24, dim=1536),
    "GPT-XXXL": GPTConfig(n_layer=48, n_head=40, dim=2560),
    "GPT-1B": GPTConfig(n_layer=22, n_head=32, dim=2048),
    "GPT-3B": GPTConfig(n_layer=24, n_head=32, dim=3200),
    "GPT-7B": GPTConfig(n_layer=32, n_head=32, dim=4096),
}


def gpt_preset(
    name: str, model_type: str = "c2i", block_size: int = 256, vocab_size: int = 16384
) -> GPTConfig:
    """An official size as configured by the official samplers.

    c2i uses one condition slot; t2i uses 120 caption slots. ``block_size`` is
    ``(image_size // 16) ** 2`` for VQ-16 (256 for 256 px, 576 for 384 px).
    """
    if name not in GPT_PRESETS:
        raise ValueError(f"unknown LlamaGen size {name!r}; known: {', '.join(GPT_PRESETS)}")
    cls_token_num = 1 if model_type == "c2i" else 120
    return replace(
        GPT_PRESETS[name],
        model_type=model_type,
        cls_token_num=cls_token_num,
        block_size=block_size,
        vocab_size=vocab_size,
    )
