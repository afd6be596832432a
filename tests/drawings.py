"""What the verifier is tested on besides world.render: scenes drawn by another tool (Pillow's ImageDraw),
and the hybrids a parallel decoder can commit (one token of a shape swapped for another shape's).

    python tests/drawings.py --n 2000   # the verifier on every kind of legal scene and on every hybrid
"""

import argparse
import os
import sys

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import rewards  # noqa: E402
import world  # noqa: E402
from model import VQCodebook  # noqa: E402

DRAWS = ("render", "antialias", "grid", "grid-aa", "pillow", "pillow-aa")  # grid: objects on the 4-pixel grid


def pillow_render(prompts, image_size, generator, supersample=1):
    """Like world.render but drawn with ImageDraw; supersample > 1 draws big and box-filters down
    (anti-aliased edges, shifted by a random sub-pixel offset), supersample == 1 is Pillow's plain
    rasterisation."""
    out = []
    H, k = image_size, supersample
    for p in prompts:
        _, objs, rel = world.parse_prompt(p)
        im = Image.new("RGB", (H * k, H * k))
        draw = ImageDraw.Draw(im)
        for (color, shape), (cx, cy, s) in zip(objs, world._place(objs, rel, H, generator)):
            if k > 1:
                cx += float(torch.rand(1, generator=generator)) / 2 - 0.25
                cy += float(torch.rand(1, generator=generator)) / 2 - 0.25
            x0, y0, x1, y1 = [round(v * k) for v in (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)]
            fill = world.COLORS[color]
            if shape == "circle":
                draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
            elif shape == "square":
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
            else:
                draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
        if k > 1:
            im = im.resize((H, H), Image.BOX)
        out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(H, H, 3))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255


def scenes(n, H, seed, draw="render", noise=0.0):
    """n legal scenes drawn one of DRAWS ways (world.render hard-edged or anti-aliased, placed anywhere or on
    the 4-pixel grid of the presets; Pillow), Gaussian noise of std `noise` on top -> (true prompts, minimally
    wrong prompts, images (n, 3, H, H))."""
    g = torch.Generator().manual_seed(seed)
    prompts = world.sample_prompts(n, g)
    if draw in ("render", "antialias", "grid", "grid-aa"):
        images = world.render(prompts, H, g, antialias=draw.endswith("a"), grid=4 if draw.startswith("grid") else 1)
    else:
        images = pillow_render(prompts, H, g, supersample=4 if draw == "pillow-aa" else 1)
    wrong = [world.perturb_prompt(p, g) for p in prompts]
    if noise:
        images = (images + noise * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return prompts, wrong, images


def preset_codebook(preset, seed=0, n_fit=1000):
    """A codebook fitted as train.py fits it for `preset` (its size, patch and grid), on n_fit scenes."""
    cfg = config.Config(preset=preset, **config.PRESETS[preset])
    g = torch.Generator().manual_seed(seed)
    fit = world.render(world.sample_prompts(n_fit, g), cfg.image_size, g, grid=cfg.grid)
    return cfg, VQCodebook.fit(fit, cfg.codebook_size, cfg.patch, g)


def codebook_hybrids(cfg, vq, min_changed=8):
    """Every one-token hybrid of a preset: each colour, shape and legal size (its box on the token grid),
    each token of the object swapped for the token another shape of the same colour and box has there,
    kept where that changes at least min_changed pixels (half a 4x4 patch).
    -> (hybrids (n, 3, H, H), their true prompts, the unswapped objects (m, 3, H, H), their prompts)."""
    H, p = cfg.image_size, cfg.patch
    hybrids, prompts, whole, whole_prompts = [], [], [], []
    for ci, color in enumerate(world.COLOR_NAMES):
        for s in world.object_sizes(H, cfg.grid):
            corner = 2 * p  # the box from pixel 2p to 2p + s: tokens 2 .. 2 + s/p - 1 in each direction
            tokens = {}
            for k, shape in enumerate(world.SHAPES):
                c = torch.tensor([corner + s / 2])
                cov = world.shape_coverage(torch.tensor([k]), c, c, torch.tensor([float(s)]), H)  # (1, H, H)
                image = (cov >= 0.5).float()[:, None] * world.PALETTE[ci][None, :, None, None]
                tokens[shape] = vq.encode(image)[0].view(H // p, H // p)
                whole.append(vq.decode(tokens[shape].view(1, -1))[0])
                whole_prompts.append(f"a {color} {shape}")
            cells = range(corner // p, (corner + s) // p)
            for a in world.SHAPES:
                base = vq.decode(tokens[a].view(1, -1))[0]
                for b in world.SHAPES:
                    for ty in cells:
                        for tx in cells:
                            t = tokens[a].clone()
                            t[ty, tx] = tokens[b][ty, tx]
                            hybrid = vq.decode(t.view(1, -1))[0]
                            if a != b and ((hybrid - base).abs().amax(0) > 0.2).sum() >= min_changed:
                                hybrids.append(hybrid)
                                prompts.append(f"a {color} {a}")
    return torch.stack(hybrids), prompts, torch.stack(whole), whole_prompts


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="The verifier on legal scenes of every kind and on every hybrid.")
    ap.add_argument("--n", type=int, default=2000, help="legal scenes per kind, size and noise level")
    args = ap.parse_args()
    for preset in ("cpu", "gpu"):
        cfg, vq = preset_codebook(preset)
        H = cfg.image_size
        x, prompts, _, _ = codebook_hybrids(cfg, vq)
        refused = (rewards.reward(x, prompts) < 1).float().mean().item()
        print(f"{H}x{H} ({preset} preset's codebook, {cfg.codebook_size} codes): {len(prompts)} one-token hybrids, "
              f"reward < 1 on {refused:.2%}")
        for draw in DRAWS:
            for noise in (0.0, 0.03):
                prompts, wrong, x = scenes(args.n, H, seed=H + len(draw), draw=draw, noise=noise)
                ok = (rewards.reward(x, prompts) == 1).float().mean()
                rej = (rewards.reward(x, wrong) < 1).float().mean()
                print(f"  {draw:>9}, noise {noise:.2f}: true prompt 1.0 on {ok:.2%}, "
                      f"minimally wrong prompt < 1 on {rej:.2%} ({args.n} scenes)")
