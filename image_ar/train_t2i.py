"""Train the Shapes-T2I GPT (+ caption encoder) on pre-tokenized VQ code grids.

Owns: the training loop of the embedded default model (``mmaccel.image_ar.t2i_model``): next-token
cross-entropy on the 256 image tokens with the teacher-forced forward, classifier-free-
guidance dropout (official ``class_dropout_prob``), AdamW with linear warmup + cosine decay,
checkpoints every few minutes with automatic resume (model, optimizer, step and data
position), a held-out loss on test-split scenes tokenized with the VQ, and the final fp16
export with the exact command in its json.

Run:  OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.train_t2i --recipe image_ar/configs/shapes_t2i_recipe.json \
          --stage 1 --out-dir outputs/t2i_tiny2   (or ``--config FILE``, one full config)

Determinism: the data order and the per-row draws (``mmaccel.image_ar.t2i_batches``) are
functions of ``(seed, step)``, so a resumed run takes the same batches as an uninterrupted one.

Must never: modify the dataset or the VQ, or read test-split scenes for training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmaccel.image_ar.caption_encoder import pretrain, tokenize
from mmaccel.image_ar.cell_map import pretrain_cell_map
from mmaccel.image_ar.checkpoint import save_atomic
from mmaccel.image_ar.llamagen.config import GPTConfig
from mmaccel.image_ar.recipe import add_config_args, check_keys, config_from_args
from mmaccel.image_ar.schedule import lr_at
from mmaccel.image_ar.stage_init import CELL_MAP_PARAMS, start_from
from mmaccel.image_ar.t2i_batches import batch_indices, cells_only, cfg_drop, object_weights
from mmaccel.image_ar.t2i_model import ShapesT2IConfig, ShapesT2IModel, t2i_config

log = logging.getLogger(__name__)

CKPT_NAME = "ckpt.pt"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping.

    ``data``: ``torch.save({"tokens": int16 [N, 256], "captions": list[str], ...})``, or a list
    of such files (e.g. successive item ranges from ``mmaccel.image_ar.tokenize_shapes --start``), used
    concatenated in the order given.
    ``vq``: shipped VQ weights (json beside them) used to tokenize the held-out scenes; None
    means a random-init VQ-tiny (only for debugging the script). ``heldout_size`` test-split
    scenes give the held-out loss every ``eval_every`` steps. ``caption_pretrain_steps`` > 0
    first trains the caption encoder alone (``mmaccel.image_ar.caption_encoder.pretrain``) on the
    training captions; ``freeze_caption_encoder`` then keeps it fixed, as official LlamaGen
    keeps its T5 fixed. ``init_from`` (a ``ckpt.pt`` of an earlier run, or exported
    safetensors) starts the model from those weights instead of random ones -- a continuation
    stage with its own schedule; caption pretraining is then skipped (the encoder comes with it).
    ``gate_init`` is the value ``condition_rope_gate`` starts from when this run adds it (a
    fresh model, or ``init_from`` weights without it). 0 keeps the earlier stage's function
    exactly but is a saddle: the condition q/k the gate multiplies then get no gradient, and
    the gate's own gradient has no consistent sign, so it stays at 0 (measured). A small value
    (0.25 raised stage 7's held-out loss by only 0.045; 1.0 by 3.3) lets them learn.
    ``gate_lr_scale`` multiplies the gate's learning rate (its own AdamW group, no decay);
    ``cell_map_lr_scale`` the ``condition_cell_map`` MLP's (its own groups, usual decay).
    ``cell_map_pretrain_steps`` > 0 first trains the map's MLP to read the caption's layout
    (``mmaccel.image_ar.cell_map``) and then keeps it frozen (only the zero-initialised code -> vector
    map ``cell_embed`` learns with the GPT); like caption pretraining it runs once, at the
    start, and only in the run that adds the map (a later stage keeps the map frozen as it is).
    ``cell_embed_init`` > 0 starts ``cell_embed`` from N(0, that std) instead of zero when this
    run adds the map (trained from zero it stayed near zero, see ``mmaccel.image_ar.cell_map``).
    ``object_loss_weight`` w weighs the training loss of tokens whose patch holds an object
    pixel (known from the training caption's scene) w times the background's; the held-out
    loss stays the plain mean. Measured why: swapping where a caption's two objects are cost
    the stage-10 model only 0.004 nats per token, the background texture dominating the loss.
    ``reveal_loss_weight`` w weighs the tokens where an object shows first
    (``shapes.reveal_token_mask``: ``reveal_rows`` token rows above each object's top row and
    that row, one column wider than the object each side). Measured why: those tokens (12.5% of
    an image) hold 54% of what the caption is worth to the stage-9 model (18 nats per image of
    ~490; its tokenizer's receptive field shows an object a few rows early), the object's own
    tokens 12%: the caption's gradient is a small part of the loss and sits there.
    ``cell_only_prob`` p (needs ``condition_cell_map``): each training row, with probability
    p, gets the null caption in its condition slots but keeps its caption's cell vectors, so
    for that row the cell map is the only way to the caption. Measured why: the stage-9 model
    knows which cells hold objects (moving one object costs it 28 nats per two-object image)
    but not which object is where (swapping the two costs 1.3), and with the caption in the
    slots the map's binding was worth too little for the GPT to learn to read it.
    ``init_layers`` (with ``init_from``) grows the model in depth: entry i names the earlier
    stage's layer that layer i starts from, or is None for a new layer, whose two residual
    branches (``attention.wo``, ``feed_forward.w2``) start at zero so that it adds nothing and
    the grown model starts from the earlier stage's function exactly. The earlier layers must
    each appear once, in their order.
    """

    data: str | tuple[str, ...] = "outputs/shapes_tokens_train.pt"
    vq: str | None = "image_ar/weights/vq_tiny.safetensors"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 8e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    caption_pretrain_steps: int = 0
    caption_pretrain_batch: int = 128
    freeze_caption_encoder: bool = False
    init_from: str | None = None
    bf16: bool = False
    compile: bool = False
    heldout_size: int = 256
    eval_every: int = 200
    log_every: int = 10
    checkpoint_minutes: float = 4.0
    seed: int = 0
    gate_init: float = 0.0
    gate_lr_scale: float = 1.0
    cell_map_lr_scale: float = 1.0
    cell_map_pretrain_steps: int = 0
    cell_map_pretrain_batch: int = 256
    cell_embed_init: float = 0.0
    object_loss_weight: float = 1.0
    reveal_loss_weight: float = 1.0
    reveal_rows: int = 3
    cell_only_prob: float = 0.0
    init_layers: tuple[int | None, ...] | None = None


# what a config may set: t2i_config's arguments, the GPTConfig fields it passes on (it sets
# model_type and cls_token_num itself) and TrainConfig's fields; a recipe is checked against it
CONFIG_KEYS = {
    "model": {"dim", "n_layer", "n_head", "caption_len", "caption_dim"}
    | {f.name for f in dataclasses.fields(GPTConfig)} - {"model_type", "cls_token_num"},
    "train": {f.name for f in dataclasses.fields(TrainConfig)},
}


def config_from_dict(raw: dict[str, Any]) -> tuple[ShapesT2IConfig, TrainConfig]:
    """``{"model": t2i_config kwargs, "train": TrainConfig fields}`` (a config file, or a stage
    of a recipe) -> the two configs; ValueError names a key neither takes."""
    check_keys(raw, CONFIG_KEYS, "config")
    train = dict(raw.get("train", {}))
    for key in ("betas", "data", "init_layers"):
        if isinstance(train.get(key), list):
            train[key] = tuple(train[key])
    return t2i_config(**raw.get("model", {})), TrainConfig(**train)


def load_config(path: str | os.PathLike) -> tuple[ShapesT2IConfig, TrainConfig]:
    """The configs of a single full config file (json, as ``config_from_dict`` takes)."""
    return config_from_dict(json.loads(Path(path).read_text()))


def make_optimizer(model: ShapesT2IModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (official LlamaGen rule: dim >= 2);
    scalar gates in a group of their own with ``gate_lr_scale`` times the learning rate, the
    cell map in groups with ``cell_map_lr_scale`` times it."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gates = [p for n, p in named if n.endswith("condition_rope_gate")]
    cells = [p for n, p in named if n.startswith(CELL_MAP_PARAMS)]
    params = [
        p for n, p in named if not n.startswith(CELL_MAP_PARAMS) and not n.endswith("condition_rope_gate")
    ]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cells:
        groups += [
            {"params": [p for p in cells if p.dim() >= 2], "weight_decay": cfg.weight_decay,
             "lr_scale": cfg.cell_map_lr_scale},
            {"params": [p for p in cells if p.dim() < 2], "weight_decay": 0.0, "lr_scale": cfg.cell_map_lr_scale},
        ]  # fmt: skip
    if gates:  # own group: no decay, lr scaled (see TrainConfig.gate_lr_scale)
        groups.append({"params": gates, "weight_decay": 0.0, "lr_scale": cfg.gate_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=False)


def load_tokens(path: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[torch.Tensor, list[str]]:
    """``tokens`` (int16 ``[N, 256]``) and ``captions`` of a pre-tokenized dataset file (or files, concatenated)."""
    if not isinstance(path, (str, os.PathLike)):
        if not path:
            raise ValueError("data: empty list of token files")
        parts = [load_tokens(p) for p in path]
        widths = {t.shape[1] for t, _ in parts}
        if len(widths) != 1:
            raise ValueError(f"data files {list(path)} hold token grids of different sizes {sorted(widths)}")
        return torch.cat([t for t, _ in parts]), [c for _, caps in parts for c in caps]
    data = torch.load(path, map_location="cpu", weights_only=True)
    tokens, captions = data["tokens"], list(data["captions"])
    if tokens.dim() != 2 or tokens.shape[0] != len(captions):
        raise ValueError(f"{path}: tokens {tuple(tokens.shape)} do not pair with {len(captions)} captions")
    return tokens, captions


def heldout_tokens(
    cfg: TrainConfig, out_dir: Path, vocab_size: int, block_size: int
) -> tuple[torch.Tensor, list[str]]:
    """Test-split scenes ``0 .. heldout_size - 1`` tokenized with the VQ (cached in ``out_dir``)."""
    cache = out_dir / f"heldout_{cfg.heldout_size}.pt"
    if cache.exists():
        d = torch.load(cache, map_location="cpu", weights_only=True)
        if d.get("vq") == str(cfg.vq):
            return d["tokens"], list(d["captions"])
    from mmaccel.image_ar.llamagen.vq import VQ_PRESETS, VQModel
    from mmaccel.image_ar.shapes import caption, sample_item, to_tensor

    if cfg.vq is None:
        torch.manual_seed(cfg.seed)
        vq = VQModel(VQ_PRESETS["VQ-tiny"]).eval()
    else:
        from mmaccel.image_ar.train_vq import load_trained_vq

        vq = load_trained_vq(cfg.vq)
    tokens, captions = [], []
    with torch.no_grad():
        for start in range(0, cfg.heldout_size, 64):
            items = [sample_item(i, 0, "test") for i in range(start, min(start + 64, cfg.heldout_size))]
            tokens.append(vq.encode(torch.stack([to_tensor(img) for _, img in items])).to(torch.int16))
            captions += [caption(scene) for scene, _ in items]
    toks = torch.cat(tokens)
    if toks.shape[1] != block_size or int(toks.max()) >= vocab_size:
        raise ValueError(f"VQ {cfg.vq} gives grids {tuple(toks.shape)} that do not fit the GPT")
    torch.save({"tokens": toks, "captions": captions, "vq": str(cfg.vq)}, cache)
    return toks, captions


@torch.no_grad()
def evaluate_loss(model: ShapesT2IModel, tokens: torch.Tensor, word_ids: torch.Tensor, bf16: bool) -> float:
    """Mean teacher-forced cross-entropy (no CFG dropout) over all rows, in batches of 64."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for s in range(0, tokens.shape[0], 64):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(word_ids[s : s + 64], tokens[s : s + 64].long())
        total += loss.item() * min(64, tokens.shape[0] - s)
        n += min(64, tokens.shape[0] - s)
    model.train(was_training)
    return total / n


def train(
    model_cfg: ShapesT2IConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    stop_at: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[ShapesT2IModel, dict[str, Any]]:
    """Train (resuming from ``out_dir/ckpt.pt`` when present) until ``cfg.steps``.

    ``stop_at`` ends the run early after that step with a checkpoint, as an interruption
    would. Returns the model and a summary (step, last train loss, last held-out loss).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if not 0.0 <= cfg.cell_only_prob < 1.0:
        raise ValueError(f"cell_only_prob must be in [0, 1), got {cfg.cell_only_prob!r}")
    if cfg.cell_only_prob and not model_cfg.gpt.condition_cell_map:
        raise ValueError("cell_only_prob > 0 needs a model with condition_cell_map")
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = {"model": model_cfg.to_dict(), "train": dataclasses.asdict(cfg)}
    configs = json.loads(json.dumps(configs))  # tuples -> lists, as they come back from the file
    tokens_ND, captions = load_tokens(cfg.data)
    word_ids_NL, _ = tokenize(captions, model_cfg.caption.seq_len)
    ho_tokens, ho_captions = heldout_tokens(cfg, out_dir, model_cfg.gpt.vocab_size, model_cfg.gpt.block_size)
    ho_word_ids, _ = tokenize(ho_captions, model_cfg.caption.seq_len)

    torch.manual_seed(cfg.seed)
    model = ShapesT2IModel(model_cfg).train()
    model.caption_encoder.requires_grad_(not cfg.freeze_caption_encoder)
    cell_pretrain = bool(model_cfg.gpt.condition_cell_map) and cfg.cell_map_pretrain_steps > 0
    if cell_pretrain:  # the pretrained MLP stays fixed (see TrainConfig)
        model.gpt.cell_map.requires_grad_(False)
    opt = make_optimizer(model, cfg)
    step, data_pos, elapsed = 0, 0, 0.0
    summary: dict[str, Any] = {"train_loss": None, "heldout_loss": None}
    ckpt_path = out_dir / CKPT_NAME
    gate_is_new = model_cfg.gpt.condition_rope_gate
    cells_are_new = bool(model_cfg.gpt.condition_cell_map)
    if cfg.init_layers is not None and cfg.init_from is None:
        raise ValueError("init_layers needs init_from (the earlier stage whose layers it places)")
    if not ckpt_path.exists() and cfg.init_from is not None:
        missing = start_from(model, cfg.init_from, cfg.init_layers)
        gate_is_new = "gpt.condition_rope_gate" in missing
        cells_are_new = "gpt.cell_embed.weight" in missing
        log.info("started from the weights of %s", cfg.init_from)
    if not ckpt_path.exists() and gate_is_new:
        with torch.no_grad():
            model.gpt.condition_rope_gate.fill_(cfg.gate_init)
    elif not ckpt_path.exists() and cfg.caption_pretrain_steps > 0:
        t0 = time.perf_counter()
        summary["caption_pretrain"] = pretrain(model.caption_encoder, captions, cfg.caption_pretrain_steps,
                                               cfg.caption_pretrain_batch, seed=cfg.seed)  # fmt: skip
        summary["caption_pretrain"]["seconds"] = time.perf_counter() - t0
        log.info("caption encoder pretrained: %s", summary["caption_pretrain"])
    if not ckpt_path.exists() and cells_are_new and cfg.cell_embed_init > 0:
        with torch.no_grad():
            model.gpt.cell_embed.weight.normal_(
                0.0, cfg.cell_embed_init, generator=torch.Generator().manual_seed(cfg.seed)
            )
    if not ckpt_path.exists() and cell_pretrain and cells_are_new:
        t0 = time.perf_counter()
        summary["cell_map_pretrain"] = pretrain_cell_map(
            model, word_ids_NL, captions, cfg.cell_map_pretrain_steps, cfg.cell_map_pretrain_batch,
            seed=cfg.seed, heldout=(ho_word_ids, ho_captions),
        )  # fmt: skip
        summary["cell_map_pretrain"]["seconds"] = time.perf_counter() - t0
        log.info("cell map pretrained: %s", summary["cell_map_pretrain"])
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["configs"] != configs:
            raise ValueError(
                f"{ckpt_path} was written with another config: {ckpt['configs']}; delete it to restart"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, data_pos, elapsed = ckpt["step"], ckpt["data_pos"], ckpt["elapsed"]
        summary = ckpt["summary"]
        log.info("resumed from %s at step %d (data position %d)", ckpt_path, step, data_pos)

    def save() -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "data_pos": data_pos, "elapsed": elapsed + time.perf_counter() - t_start,
                 "summary": summary, "configs": configs}  # fmt: skip
        save_atomic(state, ckpt_path)

    weights_of = object_weights(
        captions, cfg.object_loss_weight, model_cfg.gpt.grid_size, cfg.reveal_loss_weight, cfg.reveal_rows
    )
    loss_fn = torch.compile(model.loss) if cfg.compile else model.loss
    metrics = (out_dir / "metrics.jsonl").open("a")
    t_start = t_ckpt = time.perf_counter()
    last = stop_at if stop_at is not None else cfg.steps
    bar = tqdm(total=cfg.steps, initial=step, desc="t2i", unit="step", disable=not progress, mininterval=5)
    running = None
    while step < min(last, cfg.steps):
        idx_B = batch_indices(data_pos, cfg.batch_size, tokens_ND.shape[0], cfg.seed)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = loss_fn(word_ids_NL[idx_B], tokens_ND[idx_B].long(),
                           cfg_drop(step, cfg.batch_size, cfg.cfg_dropout, cfg.seed),
                           None if weights_of is None else weights_of(idx_B),
                           cells_only(step, cfg.batch_size, cfg.cell_only_prob, cfg.seed))  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step, data_pos = step + 1, data_pos + cfg.batch_size
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}; lower lr or disable bf16")
        running = value if running is None else 0.95 * running + 0.05 * value
        summary["train_loss"] = running
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        if on_step is not None:
            on_step(step, value)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, "loss": value, "loss_ema": running, "lr": lr_at(step - 1, cfg),
                   "grad_norm": float(grad_norm), "time_s": elapsed + time.perf_counter() - t_start}  # fmt: skip
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            summary["heldout_loss"] = evaluate_loss(model, ho_tokens, ho_word_ids, cfg.bf16)
            metrics.write(json.dumps({"step": step, "heldout_loss": summary["heldout_loss"]}) + "\n")
            metrics.flush()
            log.info("step %d: train loss %.4f, held-out loss %.4f", step, running, summary["heldout_loss"])
        if time.perf_counter() - t_ckpt > 60 * cfg.checkpoint_minutes:
            save()
            t_ckpt = time.perf_counter()
    bar.close()
    save()
    metrics.close()
    summary.update(step=step, elapsed_s=elapsed + time.perf_counter() - t_start)
    return model.eval(), summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the Shapes-T2I GPT on VQ token grids.")
    add_config_args(parser)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/t2i_tiny"))
    parser.add_argument("--weights", type=Path, default=None,
                        help="also write the final fp16 weights (+ json) here")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    model_cfg, cfg = config_from_dict(config_from_args(parser, args, CONFIG_KEYS)[0])
    model, summary = train(model_cfg, cfg, args.out_dir)
    # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which on a shared
    # 2-core machine made steps ~2.5x faster (measured); record it as part of the command
    env = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY",) if k in os.environ]
    meta = {
        "command": " ".join(
            [*env, "python -m mmaccel.image_ar.train_t2i", shlex.join(sys.argv[1:] if argv is None else argv)]
        ),
        "train": dataclasses.asdict(cfg),
        "result": summary,
    }
    for target in [args.out_dir, args.weights]:
        if target is not None:
            path, _ = model.save(target, meta)
            log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
