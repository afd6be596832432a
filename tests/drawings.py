"""Scenes drawn by another tool (Pillow's ImageDraw), to check the verifier is not tied to world.render."""

import torch
from PIL import Image, ImageDraw

import world


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
                cx, cy = cx + float(torch.rand(1, generator=generator)) / 2 - 0.25, cy + float(torch.rand(1, generator=generator)) / 2 - 0.25
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
