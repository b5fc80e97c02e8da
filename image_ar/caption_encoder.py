"""Caption encoder of the embedded Shapes-T2I model: words -> caption features ``[B, L, C]``.

Owns: the word-level tokenizer over ``mmaccel.image_ar.shapes.CAPTION_WORDS`` (lower-case, punctuation
stripped, unknown words dropped and returned so the caller can warn) and a small bidirectional
transformer (word + position embeddings, pre-norm blocks) whose output is the ``caption_dim``
feature sequence the LlamaGen GPT's official ``CaptionEmbedder`` (``cap_proj``) projects.
This plays the role flan-t5-xl plays for official LlamaGen t2i, at the size of our grammar.

Why every slot carries the whole caption. Official LlamaGen's RoPE rows for condition
positions are zero, so inside the GPT condition queries and keys are zero: image tokens see
the condition slots only through a uniform average of their values, and cannot pick out
"the word in slot 5". Word order and binding (which colour goes with which shape and
position) must therefore already be mixed into every slot here. Attention in this encoder is
bidirectional and unmasked: padding slots attend to the words too (padding is a function of
the caption length, so no information leaks in from outside the caption), which makes every
one of the ``L`` slots informative and lets the GPT use all of them with no padding mask.

Pretraining (``pretrain``). Official LlamaGen conditions on a *pretrained* text encoder
(flan-t5-xl). Ours starts random, and trained end to end through the GPT's averaged
condition slots it learns binding very slowly (measured: after 570 GPT steps a linear probe
on the slot-mean read the background colour right 22% of the time, chance 12.5%). So before
GPT training the encoder is trained for a few minutes as an autoencoder *through the same
bottleneck the GPT has*: from the mean over slots alone, a small readout must recover every
word at every position. That objective knows nothing of the grammar (no parser, no labels),
yet it makes the slot-mean carry the whole ordered caption (after 1000 steps a linear probe
on it reads background 79%, first object's position 95%, colour 83%, shape 93%).

Must never: raise on words outside the grammar (they are dropped), or read anything but
its own parameters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.shapes import CAPTION_WORDS

PAD_ID = 0
VOCAB: tuple[str, ...] = ("<pad>", *CAPTION_WORDS)
_WORD_ID = {w: i for i, w in enumerate(VOCAB) if i != PAD_ID}
_PUNCT_RE = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class CaptionEncoderConfig:
    """Sizes of the caption encoder.

    ``seq_len`` must equal the GPT's ``caption_len`` (and ``cls_token_num``); ``dim`` is its
    ``caption_dim``. Longer captions are truncated to ``seq_len`` words (the grammar's
    longest caption has 21).
    """

    seq_len: int = 24
    dim: int = 128
    n_layer: int = 2
    n_head: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` with punctuation removed (``"Top-left."`` -> ``["top", "left"]``)."""
    return _PUNCT_RE.sub(" ", text.lower()).split()


def tokenize(texts: Sequence[str], seq_len: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Word ids ``[B, seq_len]`` (``PAD_ID``-padded) and, per text, the words that were dropped.

    A word is dropped when it is not in ``CAPTION_WORDS``, or when it falls past ``seq_len``
    known words (then it is reported too, so the caller's warning is complete).
    """
    ids_BL = torch.full((len(texts), seq_len), PAD_ID, dtype=torch.long)
    dropped: list[list[str]] = []
    for b, text in enumerate(texts):
        known, unknown = [], []
        for word in split_words(text):
            (known if word in _WORD_ID else unknown).append(word)
        unknown.extend(known[seq_len:])
        ids = [_WORD_ID[w] for w in known[:seq_len]]
        ids_BL[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        dropped.append(unknown)
    return ids_BL, dropped


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention + GELU MLP."""

    def __init__(self, cfg: CaptionEncoderConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        B, L, C = x_BLC.shape
        qkv = self.qkv(self.norm1(x_BLC)).view(B, L, 3, self.n_head, C // self.n_head)
        q_BHLD, k_BHLD, v_BHLD = qkv.permute(2, 0, 3, 1, 4)
        y_BHLD = F.scaled_dot_product_attention(q_BHLD, k_BHLD, v_BHLD)  # no mask: see module docstring
        x_BLC = x_BLC + self.proj(y_BHLD.transpose(1, 2).reshape(B, L, C))
        return x_BLC + self.fc2(F.gelu(self.fc1(self.norm2(x_BLC))))


class CaptionEncoder(nn.Module):
    """Word ids ``[B, L]`` -> caption features ``[B, L, dim]`` (every slot sees every word)."""

    def __init__(self, cfg: CaptionEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word_embedding = nn.Embedding(len(VOCAB), cfg.dim)
        self.pos_embedding = nn.Parameter(torch.zeros(cfg.seq_len, cfg.dim))
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) weights and zero biases; LayerNorms at identity."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        self.pos_embedding.normal_(0.0, 0.02)

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        if ids_BL.shape[1] != self.cfg.seq_len:
            raise ValueError(f"expected {self.cfg.seq_len} word slots, got {ids_BL.shape[1]}")
        x_BLC = self.word_embedding(ids_BL) + self.pos_embedding
        for block in self.blocks:
            x_BLC = block(x_BLC)
        return self.norm(x_BLC)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[list[str]]]:
        """Caption features ``[B, L, dim]`` of ``texts`` and the words dropped from each."""
        ids_BL, dropped = tokenize(texts, self.cfg.seq_len)
        return self.forward(ids_BL.to(self.pos_embedding.device)), dropped


class SlotMeanReadout(nn.Module):
    """Pretraining head: word logits ``[B, L, vocab]`` from the slot-mean of the features only."""

    def __init__(self, cfg: CaptionEncoderConfig, hidden: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.pos_query = nn.Parameter(torch.randn(cfg.seq_len, cfg.dim) * 0.02)
        self.fc1 = nn.Linear(cfg.dim, hidden)
        self.fc2 = nn.Linear(hidden, len(VOCAB))

    def forward(self, feats_BLC: torch.Tensor) -> torch.Tensor:
        pooled_B1C = self.norm(feats_BLC.mean(1, keepdim=True))  # what the GPT's uniform average sees
        return self.fc2(F.gelu(self.fc1(pooled_B1C + self.pos_query)))


def pretrain_lr(step: int, steps: int, lr: float) -> float:
    """Learning rate of pretraining step ``step`` of ``steps``: 5% linear warmup, then cosine to 0
    (the cosine in float32: the shipped weights were trained with exactly this schedule)."""
    warm = min(1.0, (step + 1) / max(1, steps // 20))
    return lr * warm * 0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi)).item())


def pretrain(
    encoder: CaptionEncoder,
    captions: Sequence[str],
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``encoder`` in place to make its slot-mean an autoencoding of the whole caption.

    Loss: cross-entropy of every slot's word id (padding included) read back by a
    ``SlotMeanReadout`` from the mean over slots; AdamW, 5% linear warmup then cosine to 0.
    Batches are drawn with a generator seeded by ``seed``. Returns the final loss and word
    accuracy (on the last batch). The encoder's ``requires_grad`` flags are left as found.
    """
    ids_NL, _ = tokenize(captions, encoder.cfg.seq_len)
    ids_NL = ids_NL.to(encoder.pos_embedding.device)
    torch.manual_seed(seed)
    readout = SlotMeanReadout(encoder.cfg).to(ids_NL.device)
    requires = [p.requires_grad for p in encoder.parameters()]
    encoder.requires_grad_(True)  # it may be frozen for GPT training; pretraining needs gradients
    opt = torch.optim.AdamW([*encoder.parameters(), *readout.parameters()], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    was_training = encoder.training
    encoder.train()
    loss = acc = torch.zeros(())
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = pretrain_lr(step, steps, lr)
        idx_B = torch.randint(0, ids_NL.shape[0], (batch_size,), generator=gen)
        logits_BLV = readout(encoder(ids_NL[idx_B]))
        loss = F.cross_entropy(logits_BLV.flatten(0, 1), ids_NL[idx_B].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (logits_BLV.argmax(-1) == ids_NL[idx_B]).float().mean()
    encoder.train(was_training)
    for p, r in zip(encoder.parameters(), requires, strict=True):
        p.requires_grad_(r)
    return {"loss": loss.item(), "word_accuracy": acc.item()}
