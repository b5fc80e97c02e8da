"""A small feature network for Frechet distance on Shapes-T2I ("FD-Shapes").

Owns: the CNN whose penultimate 64-d activations are the features, the scene labels it is
trained to predict (background colour; per grid cell: object colour, shape and size), its
training run (``python -m mmaccel.image_ar.shapes_features --out ...``) and the loader of the shipped
weights. Inception weights cannot be downloaded here, so FID figures made with this network
compare methods on the same model; they are not comparable with published tables.

Must never: download anything; change the feature definition without retraining and
re-shipping the weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.checkpoint import save_safetensors
from mmaccel.image_ar.shapes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, sample_item, to_tensor

WEIGHTS = Path(__file__).parent / "weights" / "shapes_features.safetensors"
_COLOURS, _NO = list(COLOURS), 0  # class 0 of a cell head = empty cell
log = logging.getLogger(__name__)


class ShapesFeatureNet(nn.Module):
    """CNN on 64x64 RGB. ``forward`` takes float images in [0, 1] (any size, resized to 64)
    and returns ``[N, 64]`` features; ``heads`` are used only in training."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 32, 64, 128, 128]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(128 * 4 * 4, self.num_features)
        n_cells = len(POSITIONS)
        self.heads = nn.ModuleDict(
            {
                "background": nn.Linear(self.num_features, len(COLOURS)),
                "colour": nn.Linear(self.num_features, n_cells * (len(COLOURS) + 1)),
                "shape": nn.Linear(self.num_features, n_cells * (len(SHAPES) + 1)),
                "size": nn.Linear(self.num_features, n_cells * (len(SIZES) + 1)),
            }
        )

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        x = images_NCHW.float()
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        x = self.convs(x * 2 - 1)
        return F.silu(self.proj(x.flatten(1)))

    def logits(self, features_NF: torch.Tensor) -> dict[str, torch.Tensor]:
        n = features_NF.shape[0]
        return {k: h(features_NF).view(n, -1) for k, h in self.heads.items()}


def scene_labels(scene: Scene) -> dict[str, torch.Tensor]:
    """Training targets: background colour; per cell: colour, shape, size (0 = empty)."""
    colour, shape, size = (np.zeros(len(POSITIONS), dtype=np.int64) for _ in range(3))
    for obj in scene.objects:
        cell = POSITIONS.index(obj.position)
        colour[cell] = 1 + _COLOURS.index(obj.colour)
        shape[cell] = 1 + SHAPES.index(obj.shape)
        size[cell] = 1 + list(SIZES).index(obj.size)
    return {
        "background": torch.tensor(_COLOURS.index(scene.background)),
        "colour": torch.from_numpy(colour),
        "shape": torch.from_numpy(shape),
        "size": torch.from_numpy(size),
    }


def _batch(start: int, n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, labels = [], []
    for i in range(start, start + n):
        scene, img = sample_item(i, seed, "train")
        images.append((to_tensor(img) + 1) / 2)
        labels.append(scene_labels(scene))
    return torch.stack(images), {k: torch.stack([lab[k] for lab in labels]) for k in labels[0]}


def loss_and_accuracy(net: ShapesFeatureNet, images, labels) -> tuple[torch.Tensor, float]:
    feats = net(images)
    total, correct, count = 0.0, 0, 0
    for name, head in net.heads.items():
        logits = head(feats)
        target = labels[name]
        if name != "background":
            logits = logits.view(target.shape[0] * target.shape[1], -1)
            target = target.flatten()
        total = total + F.cross_entropy(logits, target)
        correct += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    return total, correct / count


def train(out: Path, steps: int = 1500, batch: int = 64, seed: int = 0, lr: float = 2e-3) -> ShapesFeatureNet:
    """Train the feature network on freshly rendered Shapes-T2I scenes; save fp16 safetensors."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = ShapesFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bar = tqdm(range(steps), desc="feature net")
    for step in bar:
        images, labels = _batch(step * batch, batch, seed)
        loss, acc = loss_and_accuracy(net, images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
        if step % 100 == 0:
            log.info("step %d loss %.4f label accuracy %.4f", step, loss.item(), acc)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.half().contiguous() for k, v in net.state_dict().items()}, out)
    return net


def load_feature_net(path: Path | str = WEIGHTS) -> ShapesFeatureNet:
    """The shipped (or a given) feature network, eval mode, float32."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"feature-network weights not found at {path}; train them with "
            "`python -m mmaccel.image_ar.shapes_features --out PATH`"
        )
    net = ShapesFeatureNet()
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the Shapes-T2I feature network for FD.")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = train(args.out, args.steps, args.batch, args.seed)
    images, labels = _batch(10_000_000, 512, args.seed + 1)  # unseen training-split indices
    with torch.no_grad():
        _, acc = loss_and_accuracy(net.eval(), images, labels)
    print(f"saved {args.out}; held-out label accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
