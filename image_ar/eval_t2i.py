"""Evaluate the Shapes-T2I model: plain KV-cached sampling, VQ decoding, prompt accuracy.

Owns: a reference sampler for ``ShapesT2IModel`` that does not go through the engine
(prefill the L condition slots, then one image token per forward; classifier-free guidance
as official LlamaGen: ``l = l_u + s * (l_c - l_u)`` on a doubled batch, skipped at s = 1),
decoding with the VQ, and a CLI that scores held-out (test-split) prompts with
``mmaccel.image_ar.shapes_accuracy.report`` for several guidance scales.

Run:  python -m mmaccel.image_ar.eval_t2i --weights image_ar/weights/shapes_t2i.safetensors \
          --vq image_ar/weights/vq_tiny.safetensors --n 100 --cfg 1,2,4

The reference sampler is kept apart from the engine on purpose: it is the oracle that
``tests/test_generate_image.py`` holds the engine's ``ar`` to (same seed, identical tokens),
so the guidance figures measured here are the engine's ``ar`` figures.

Must never: train or modify the models; it is a baseline check, not the engine's ``ar`` path.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmaccel.image_ar.llamagen.vq import VQModel
from mmaccel.image_ar.t2i_model import ShapesT2IModel
from mmaccel.sampling import SamplingConfig, apply_cfg, process_logits, sample, sample_with

log = logging.getLogger(__name__)


@torch.no_grad()
def sample_tokens(
    model: ShapesT2IModel,
    prompts: Sequence[str],
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """Image tokens ``[B, N]`` for ``prompts`` by plain AR sampling with a static KV cache."""
    gpt = model.gpt
    B, L, N = len(prompts), gpt.cls_token_num, gpt.cfg.block_size
    guided = cfg_scale != 1.0
    cond_BLC, _ = model.encode_captions(prompts)
    if guided:
        cond_BLC = torch.cat([cond_BLC, model.null_cond_embs(B).to(cond_BLC)])
    rows = cond_BLC.shape[0]
    cache = gpt.new_cache(rows, L + N)
    gen = torch.Generator(device=cond_BLC.device).manual_seed(seed)
    scfg = SamplingConfig(temperature=temperature, top_k=top_k)
    logits_RV = gpt.prefill_condition(cond_BLC, cache)
    cells_RKC = gpt.cell_vectors(cond_BLC)
    out_BN = torch.empty(B, N, dtype=torch.long, device=cond_BLC.device)
    for i in range(N):
        logits_BV = apply_cfg(logits_RV, cfg_scale) if guided else logits_RV
        probs_BV = process_logits(logits_BV, scfg)
        # the engine's order of draws: the prefill's token from the generator, then one tensor of
        # uniforms per step (mmaccel.sampling.Draws), so the same seed gives the same tokens
        u_BV = torch.rand(probs_BV.shape, device=probs_BV.device, generator=gen) if i else None
        out_BN[:, i] = sample(probs_BV, gen) if i == 0 else sample_with(probs_BV, u_BV)
        if i == N - 1:
            break
        tok_R1 = out_BN[:, i : i + 1].repeat(rows // B, 1)
        pos_R1 = torch.full((rows, 1), L + i, device=tok_R1.device)
        logits_RV = gpt(tok_R1, pos_R1, cache, cache.slots(1), cache.attn_mask(1), cond_BLC, cells_RKC)[:, -1]
        cache.commit(torch.ones(rows, dtype=torch.int32, device=tok_R1.device))
    return out_BN


@torch.no_grad()
def decode_images(vq: VQModel, tokens_BN: torch.Tensor) -> list[Image.Image]:
    """PIL images of code grids ``[B, h*w]`` (square grid)."""
    img_BCHW = vq.decode_codes(tokens_BN.long())
    arr = ((img_BCHW.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def image_grid(images: Sequence[Image.Image], cols: int = 10) -> Image.Image:
    """Images tiled row-major into one picture (for eyeballing samples)."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def test_prompts(n: int, seed: int = 0) -> list[str]:
    """Captions of test-split items ``0 .. n-1`` (never seen in training)."""
    from mmaccel.image_ar.shapes import ShapesT2I, caption

    ds = ShapesT2I(n, seed=seed, split="test")
    return [caption(ds.scene(i)) for i in range(n)]


def evaluate(
    model: ShapesT2IModel,
    vq: VQModel,
    prompts: Sequence[str],
    cfg_scale: float,
    seed: int = 0,
    batch_size: int = 50,
    temperature: float = 1.0,
    top_k: int = 0,
) -> tuple[dict[str, float], list[Image.Image]]:
    """Prompt accuracy (``mmaccel.image_ar.shapes_accuracy.report``) of one sample per prompt."""
    from mmaccel.image_ar.shapes_accuracy import report

    images: list[Image.Image] = []
    for s in range(0, len(prompts), batch_size):
        tokens_BN = sample_tokens(
            model, prompts[s : s + batch_size], cfg_scale, temperature, top_k, seed=seed + s
        )
        images += decode_images(vq, tokens_BN)
    return report(images, list(prompts)), images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prompt accuracy of the Shapes-T2I model on test prompts.")
    parser.add_argument("--weights", type=Path, default=Path("image_ar/weights/shapes_t2i.safetensors"))
    parser.add_argument("--vq", type=Path, default=Path("image_ar/weights/vq_tiny.safetensors"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0, help="first test item")
    parser.add_argument("--cfg", default="1,2,4", help="comma-separated guidance scales")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-seed", type=int, default=0, help="dataset seed of the prompts (tuning: 7)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="json with the results (+ png grids beside)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    from mmaccel.image_ar.train_vq import load_trained_vq

    model, vq = ShapesT2IModel.load(args.weights), load_trained_vq(args.vq)
    prompts = test_prompts(args.offset + args.n, args.prompt_seed)[args.offset :]
    results = {}
    for scale in [float(s) for s in args.cfg.split(",")]:
        t0 = time.perf_counter()
        rep, images = evaluate(
            model, vq, prompts, scale, args.seed, temperature=args.temperature, top_k=args.top_k
        )
        rep["seconds"] = time.perf_counter() - t0
        results[str(scale)] = rep
        log.info("cfg %.1f: %s", scale, json.dumps({k: round(v, 3) for k, v in rep.items()}))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            image_grid(images[:100]).save(args.out.with_name(f"{args.out.stem}_cfg{scale:g}.png"))
    if args.out is not None:
        args.out.write_text(json.dumps({"prompts": prompts, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
