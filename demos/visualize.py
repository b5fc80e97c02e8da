"""Pictures of *when* each image token was committed: the per-step view of a decoding run.

Owns: for raster models, the forward-index heat maps (one cell per image token, coloured by
the target forward that committed it, outlined where neighbouring tokens came from different
forwards, so a run of tokens accepted together shows as one outlined block; several runs side
by side share one colour scale and one colour bar) and the animated GIF of the token grids of
two runs filling forward by forward, side by side; for next-scale (VAR) models, where one
forward draws a whole scale, the per-scale view (``scale_maps``: each scale a square of its
tokens, coloured by the model that drew it); for masked-set (MAR) models, whose tokens come in
sets of a random order, the per-forward view (``verify_maps``: each target forward a box as wide
as the tokens it revealed, the part kept from the draft model shaded); ``comparison_view`` (the
view of a comparison, whichever the model) and ``enlarge`` (the images as shown, nearest neighbour).

Input is ``GenerateOutput.token_forward_index[b]`` for one image (``forward_N[n]`` = the
forward that committed token ``n``, raster order; 0 = the prefill) and the decoded image, or
for a next-scale run the model that drew each scale.

Must never: decode, time or load anything; it only draws results it is given.
"""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demos.models import BASELINE
from demos.texts import scales_markdown, verify_markdown

if TYPE_CHECKING:
    from demos.report import Comparison

SHOWN_PX = 256  # images are enlarged (nearest neighbour) to about this size

# viridis at 5 stops: perceptually ordered, readable for colour-blind viewers
_STOPS = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64
)
_EDGE = np.array([255, 255, 255], dtype=np.uint8)
_PENDING = np.array([200, 200, 200], dtype=np.uint8)  # not yet committed
_NEW = np.array([255, 40, 200], dtype=np.float64)  # committed by the current forward


def grid_side(num_tokens: int) -> int:
    """Side of the square token grid (16 for the 256 tokens of a 64x64 Shapes-T2I image)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"expected a square token grid, got {num_tokens} tokens")
    return side


def colormap(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB uint8 of shape ``t.shape + (3,)``."""
    x = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * (len(_STOPS) - 1)
    i = np.minimum(x.astype(np.int64), len(_STOPS) - 2)
    frac = (x - i)[..., None]
    return (_STOPS[i] * (1 - frac) + _STOPS[i + 1] * frac).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _grid_pixels(forward_N: np.ndarray, num_forwards: int, cell: int) -> np.ndarray:
    """The token grid as RGB pixels on the scale 0 .. ``num_forwards - 1``, with block outlines."""
    side = grid_side(forward_N.size)
    grid_HW = forward_N.reshape(side, side)
    rgb_HW3 = colormap(grid_HW / max(num_forwards - 1, 1))
    pixels = np.repeat(np.repeat(rgb_HW3, cell, axis=0), cell, axis=1)
    ys, xs = np.mgrid[0 : side * cell, 0 : side * cell]
    r, c = ys // cell, xs // cell
    left = (xs % cell == 0) & (c > 0)
    top = (ys % cell == 0) & (r > 0)
    edge = np.zeros(pixels.shape[:2], dtype=bool)
    edge[left] = grid_HW[r[left], c[left]] != grid_HW[r[left], c[left] - 1]
    edge[top] |= grid_HW[r[top], c[top]] != grid_HW[r[top] - 1, c[top]]
    pixels[edge] = _EDGE
    return pixels


def _colourbar(width: int, num_forwards: int, caption: str, pad: int) -> Image.Image:
    """A colour bar ``width`` wide for forwards 0 .. ``num_forwards - 1``, ticks, a caption; ``pad``
    of margin each side, where the end tick labels overhang."""
    bar_h, tick_h = 12, 4
    legend = Image.new("RGB", (width + 2 * pad, bar_h + tick_h + 34), (255, 255, 255))
    bar = colormap(np.linspace(0, 1, width))[None].repeat(bar_h, axis=0)
    legend.paste(Image.fromarray(bar), (pad, 0))
    draw, font = ImageDraw.Draw(legend), _font(11)
    last = max(num_forwards - 1, 1)
    step = max(1, 10 ** math.floor(math.log10(last)))
    if last / step < 3:
        step //= 2 if step >= 2 else 1
    ticks = [*range(0, last - step // 2, step), last] if last > 1 else [0, 1]
    for t in ticks:
        x = pad + round(t / last * (width - 1))
        draw.line([(x, bar_h), (x, bar_h + tick_h)], fill=(0, 0, 0))
        draw.text((x, bar_h + tick_h + 1), str(t), fill=(0, 0, 0), font=font, anchor="ma")
    draw.text((pad + width // 2, bar_h + tick_h + 17), caption, fill=(0, 0, 0), font=font, anchor="ma")
    return legend


def heat_map(
    forward_N: np.ndarray, num_forwards: int | None = None, cell: int = 16, title: str = ""
) -> Image.Image:
    """The token grid coloured by the forward that committed each token, with a colour bar.

    ``num_forwards`` fixes the colour scale (default: the run's own forwards, so the first
    forward is dark and the last bright). White lines separate tokens committed by different
    forwards: a block without inner lines was accepted by one forward. ``title`` goes above.
    """
    return heat_maps([(title, forward_N)], num_forwards=num_forwards, cell=cell)


def heat_maps(
    runs: list[tuple[str, np.ndarray]],
    num_forwards: int | None = None,
    cell: int = 12,
    gap: int = 24,
    pad: int = 12,
) -> Image.Image:
    """Several runs' token grids side by side on ONE colour scale, with one colour bar under them.

    ``runs``: (title, forward_N) each. The scale runs from forward 0 to ``num_forwards - 1``
    (default: the longest run's last forward), so the same colour means the same forward in
    every grid: a run that needed fewer forwards stays in the dark part of the scale.
    """
    forwards = [np.asarray(fwd) for _, fwd in runs]
    if num_forwards is None:
        num_forwards = max(int(fwd.max()) for fwd in forwards) + 1
    panels = [_grid_pixels(fwd, num_forwards, cell) for fwd in forwards]
    side = panels[0].shape[0]
    width = len(panels) * side + (len(panels) - 1) * gap
    top = 20 if any(title for title, _ in runs) else 0
    caption = "forward that committed the token" + (" (one scale for all maps)" if len(runs) > 1 else "")
    legend = _colourbar(width, num_forwards, caption, pad)
    out = Image.new("RGB", (width + 2 * pad, top + side + 6 + legend.height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, ((title, _), pixels) in enumerate(zip(runs, panels, strict=True)):
        x = pad + i * (side + gap)
        if title:
            draw.text((x, 3), title, fill=(0, 0, 0), font=_font(12))
        out.paste(Image.fromarray(pixels), (x, top))
    out.paste(legend, (0, top + side + 6))
    return out


class _Panel:
    """One run in the animation: committed tokens show the final image, the newest tinted."""

    def __init__(self, image: Image.Image, forward_N: np.ndarray, scale: int) -> None:
        side = grid_side(forward_N.size)
        self.img = np.asarray(
            image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
        )
        H, W = self.img.shape[:2]
        token_HW = (np.arange(H)[:, None] * side // H) * side + np.arange(W)[None] * side // W
        self.fwd_HW = forward_N[token_HW]
        self.tinted = (0.45 * self.img + 0.55 * _NEW).astype(np.uint8)

    def frame(self, prev: int, end: int) -> Image.Image:
        """Tokens of forwards <= ``end`` shown; those of forwards in (prev, end] tinted."""
        out = np.where((self.fwd_HW <= end)[..., None], self.img, _PENDING)
        new_HW = (self.fwd_HW > prev) & (self.fwd_HW <= end)
        return Image.fromarray(np.where(new_HW[..., None], self.tinted, out).astype(np.uint8))


def filling_gif(
    runs: list[tuple[str, Image.Image, np.ndarray]], scale: int = 3, frame_ms: int = 50, max_frames: int = 128
) -> bytes:
    """An animated GIF of several runs filling their token grids, forward by forward.

    ``runs``: (label, final image, forward_N) each. Each frame shows every token committed so
    far, the tokens committed since the previous frame tinted magenta. One frame per forward
    up to ``max_frames``; longer runs show a few forwards per frame. Runs that finish early
    hold their final image.
    """
    forwards = [np.asarray(fwd) for _, _, fwd in runs]
    panels = [_Panel(img, fwd, scale) for (_, img, _), fwd in zip(runs, forwards, strict=True)]
    H, W = panels[0].img.shape[:2]
    gap, caption = 12, 34
    size = (len(runs) * W + (len(runs) - 1) * gap, H + caption)
    font = _font(12)
    last_all = max(int(fwd.max()) for fwd in forwards)
    stride = math.ceil((last_all + 1) / max_frames)
    ends = sorted(set(range(0, last_all + 1, stride)) | {last_all})

    def compose(prev: int, end: int) -> Image.Image:
        canvas = Image.new("RGB", size, (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, ((label, _, _), fwd, panel) in enumerate(zip(runs, forwards, panels, strict=True)):
            x, last = i * (W + gap), int(fwd.max())
            canvas.paste(panel.frame(prev, end), (x, 0))
            draw.text((x, H + 3), label, fill=(0, 0, 0), font=font)
            if end >= last:
                text = f"done after {last + 1} forwards"
            else:
                text = f"forward {end}: {int((fwd <= end).sum())}/{fwd.size} tokens"
            draw.text((x, H + 18), text, fill=(60, 60, 60), font=font)
        return canvas

    frames = [compose(prev, end) for prev, end in zip([-1, *ends[:-1]], ends, strict=True)]
    frames.append(compose(last_all, last_all))  # the finished pictures, nothing tinted
    # one shared palette (final pictures, their tinted versions, empty grids, text) keeps frames small
    source = Image.new("RGB", (size[0], 3 * size[1]))
    for i, frame in enumerate((frames[-1], compose(-1, last_all), compose(-1, -1))):
        source.paste(frame, (0, i * size[1]))
    palette = source.quantize(colors=255)
    indexed = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    buf = io.BytesIO()
    durations = [frame_ms] * (len(frames) - 1) + [2500]
    indexed[0].save(
        buf, format="GIF", save_all=True, append_images=indexed[1:], duration=durations, loop=0, optimize=True
    )
    return buf.getvalue()


# the two models of a next-scale pair, on the ends of the forward colour scale
MODEL_COLOURS = {"large model": tuple(_STOPS[1].astype(int)), "small model": tuple(_STOPS[3].astype(int))}


def scale_maps(
    runs: list[tuple[str, list[str]]], sides: list[int], box: int = 48, gap: int = 10, pad: int = 12
) -> Image.Image:
    """The per-scale view of next-scale runs: one row per run, one square per scale.

    ``runs``: (title, the model that drew each scale: ``"large model"`` or ``"small model"``);
    ``sides``: each scale's side (1, 2, 3, ... 8). Every scale is drawn as a ``box``-pixel square
    split into its ``side x side`` tokens, coloured by the model that drew it, with its size under
    it; a legend of the models closes the picture.
    """
    font, small = _font(12), _font(11)
    width = len(sides) * box + (len(sides) - 1) * gap
    row_h = 18 + box + 24
    legend_h = 22
    out = Image.new("RGB", (width + 2 * pad, pad + len(runs) * row_h + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for r, (title, drew) in enumerate(runs):
        y = pad + r * row_h
        draw.text((pad, y), title, fill=(0, 0, 0), font=font)
        for k, (side, who) in enumerate(zip(sides, drew, strict=True)):
            x0, y0 = pad + k * (box + gap), y + 18
            draw.rectangle([x0, y0, x0 + box - 1, y0 + box - 1], fill=MODEL_COLOURS[who])
            for i in range(1, side):  # token boundaries inside the scale
                t = round(i * box / side)
                draw.line([(x0 + t, y0), (x0 + t, y0 + box - 1)], fill=(255, 255, 255))
                draw.line([(x0, y0 + t), (x0 + box - 1, y0 + t)], fill=(255, 255, 255))
            draw.text(
                (x0 + box // 2, y0 + box + 2), f"{side}x{side}", fill=(60, 60, 60), font=small, anchor="ma"
            )
    x, y = pad, pad + len(runs) * row_h + 4
    for who, colour in MODEL_COLOURS.items():
        draw.rectangle([x, y, x + 12, y + 12], fill=colour)
        draw.text((x + 18, y), who, fill=(0, 0, 0), font=small)
        x += 18 + int(draw.textlength(who, font=small)) + 24
    return out


# the two models of a masked-set pair: what the target drew, and what it kept from the draft model
VERIFY_COLOURS = {
    "target model": tuple(_STOPS[1].astype(int)),
    "kept from the draft model": tuple(_STOPS[3].astype(int)),
}


def verify_maps(
    runs: list[tuple[str, list[dict]]], num_tokens: int, width: int = 480, pad: int = 12
) -> Image.Image:
    """The per-forward view of masked-set runs: one row per run, one box per target forward.

    ``runs``: (title, ``demos.report.verify_steps`` of the run). A box is as wide as the tokens
    its forward revealed (all ``num_tokens`` fill ``width``), coloured as the target model's, with
    the share kept from the draft model (``accepted``) shaded in the draft's colour; its token
    count is written under it where it fits. A legend of the two colours closes the picture.
    """
    font, small = _font(12), _font(11)
    bar_h, row_h, legend_h = 28, 18 + 28 + 20, 22
    out = Image.new("RGB", (width + 2 * pad, pad + len(runs) * row_h + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    target, kept = VERIFY_COLOURS.values()
    for r, (title, steps) in enumerate(runs):
        y = pad + r * row_h
        draw.text((pad, y), title, fill=(0, 0, 0), font=font)
        done, y0 = 0, y + 18
        for step in steps:
            x0, x1 = (
                pad + round(done * width / num_tokens),
                pad + round((done + step["tokens"]) * width / num_tokens),
            )
            done += step["tokens"]
            draw.rectangle([x0, y0, x1 - 1, y0 + bar_h - 1], fill=target)
            if step["accepted"]:
                draw.rectangle(
                    [x0, y0, x0 + round(step["accepted"] * (x1 - x0)) - 1, y0 + bar_h - 1], fill=kept
                )
            draw.line([(x0, y0), (x0, y0 + bar_h - 1)], fill=(255, 255, 255))
            label = str(step["tokens"])
            if draw.textlength(label, font=small) + 2 < x1 - x0:
                draw.text(((x0 + x1) // 2, y0 + bar_h + 2), label, fill=(60, 60, 60), font=small, anchor="ma")
    x, y = pad, pad + len(runs) * row_h + 4
    for who, colour in VERIFY_COLOURS.items():
        draw.rectangle([x, y, x + 12, y + 12], fill=colour)
        draw.text((x + 18, y), who, fill=(0, 0, 0), font=small)
        x += 18 + int(draw.textlength(who, font=small)) + 24
    return out


def enlarge(image: Image.Image, target_px: int = SHOWN_PX) -> Image.Image:
    """``image`` enlarged by a whole factor to about ``target_px``, nearest neighbour (every pixel
    a sharp block): 64x64 Shapes-T2I x4, 32x32 Fashion-MNIST x8."""
    factor = max(1, target_px // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _gif_html(c: Comparison) -> str:
    runs = [
        (label, out.images[0], out.generate_output.token_forward_index[0].numpy())
        for label, out in ((BASELINE, c.baseline), (c.request.method, c.accelerated))
    ]
    data = base64.b64encode(filling_gif(runs)).decode("ascii")
    return (
        f'<img src="data:image/gif;base64,{data}" alt="token grids filling forward by forward" '
        'style="image-rendering: pixelated; max-width: 100%">'
    )


def comparison_view(c: Comparison) -> tuple[str, Image.Image | None, str]:
    """The per-step view of a comparison: (the line above the picture, the picture, the animation's HTML).

    Raster: both runs' heat maps on one stated colour scale, and the filling animation. Next-scale
    (VAR): one forward draws a whole scale, so no token-by-token view exists: which model drew
    each scale, in words and as ``scale_maps``, and no animation. Masked-set (MAR): what each
    target forward revealed, in words and as ``verify_maps`` (no picture if the run's steps could
    not be rebuilt), and no animation.
    """
    if c.stats.get("family") == "masked-set":
        s = c.stats
        runs = [(f"{label}: {s[key]['forward_passes']} target forwards", s[key].get("verify_steps"))
                for label, key in ((BASELINE, BASELINE), (c.request.method, "accelerated"))]  # fmt: skip
        picture = verify_maps(runs, s["num_tokens"]) if all(steps for _, steps in runs) else None
        return verify_markdown(c), picture, ""
    if "scales" in c.stats:
        s = c.stats
        runs = [(f"{label}: {s[key]['forward_passes']} forwards", s[key]["scale_models"])
                for label, key in ((BASELINE, BASELINE), (c.request.method, "accelerated"))]  # fmt: skip
        return scales_markdown(c), scale_maps(runs, s["scales"]), ""
    runs = [(BASELINE, c.baseline), (c.request.method, c.accelerated)]
    forwards = [out.generate_output.token_forward_index[0].numpy() for _, out in runs]
    last = max(int(f.max()) for f in forwards)
    longest = runs[max(range(len(runs)), key=lambda i: int(forwards[i].max()))][0]
    scale = (
        f"Both maps use one colour scale: forward 0 (dark) to forward {last} (bright), "
        f"the last forward of `{longest}`."
    )
    titled = [
        (f"{label}: {out.num_forward_passes} forwards", f)
        for (label, out), f in zip(runs, forwards, strict=True)
    ]
    return scale, heat_maps(titled), _gif_html(c)
