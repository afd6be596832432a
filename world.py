"""
The toy shapes world: the prompt grammar and a renderer of scenes that satisfy a prompt.
rewards.py (the verifier and the quality metric) and everything else stand on this file,
so it has no project imports.

The world: black background, four colours, three shapes (circle,
square, upright triangle), object size between 1/4 and 3/8 of the image side, objects
never touch. Four GenEval-style prompt categories:

    single    a red circle
    two       a red circle and a blue square            (the two objects differ)
    counting  three green triangles                     (two, three or four)
    position  a yellow square above a red triangle      (the two objects differ)

For `position`, the first object's centroid lies on the named side of the second's by at
least 1/8 of the side (the verifier checks the same margin).

Token-aligned scenes: render(..., grid=g) puts every object's size and top-left corner on a
g-pixel grid. train.py uses grid = patch = 4, so at 32x32 an object (8 or 12 px) covers 2x2 or
3x3 of the 8x8 = 64 VQ tokens, and a shape exists only when its tokens agree (64x64 in the GPU
preset: 16-24 px objects, 4x4 to 6x6 of 256 tokens). grid=1 places objects anywhere (about 900
distinct 4x4 patches). (grid = patch = 8 at 32x32 gives the older board world: one object, one
token, 16 tokens.)
"""

import argparse
import functools
import math

import torch

# ---- The world

COLORS = {  # RGB 0-255
    "red": (220, 50, 50),
    "green": (50, 190, 70),
    "blue": (50, 100, 230),
    "yellow": (235, 215, 50),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {"two": 2, "three": 3, "four": 4}
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("single", "two", "counting", "position")

COLOR_NAMES = tuple(COLORS)
PALETTE = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32) / 255.0  # (4, 3)
MIN_SIZE, MAX_SIZE = 1 / 4, 3 / 8  # object size as a fraction of the image side
REL_MARGIN = 1 / 8  # the position relation needs this much centroid offset (of the side)


# ---- Prompts: parse, build, sample

@functools.lru_cache(maxsize=65536)
def parse_prompt(prompt):
    """prompt -> (category, ((colour, shape), ...), relation or None). ValueError if outside the grammar."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    words = prompt.split(" ")

    def obj(color, shape):
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r} in prompt {prompt!r}; colours are {COLOR_NAMES}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r} in prompt {prompt!r}; shapes are {SHAPES}")
        return (color, shape)

    if len(words) == 3 and words[0] == "a":
        return "single", (obj(words[1], words[2]),), None
    if len(words) == 3 and words[0] in COUNT_WORDS and words[2].endswith("s"):
        return "counting", (obj(words[1], words[2][:-1]),) * COUNT_WORDS[words[0]], None
    if len(words) == 7 and words[0] == "a" and words[3] == "and" and words[4] == "a":
        objs = (obj(words[1], words[2]), obj(words[5], words[6]))
        category, relation = "two", None
    elif len(words) in (7, 8) and words[0] == "a" and words[-3] == "a":
        relation = " ".join(words[3:-3])
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r} in prompt {prompt!r}; relations are {RELATIONS}")
        objs = (obj(words[1], words[2]), obj(words[-2], words[-1]))
        category = "position"
    else:
        raise ValueError(f"prompt {prompt!r} is outside the grammar (see world.py docstring)")
    if objs[0] == objs[1]:
        raise ValueError(f"prompt {prompt!r} names the same object twice; the two objects must differ")
    return category, objs, relation


def prompt_error(prompt):
    """Why `prompt` is outside the grammar (parse_prompt's message), or None: for the demos' usage lines."""
    try:
        parse_prompt(prompt)
    except ValueError as e:
        return str(e)


def category(prompt):
    return parse_prompt(prompt)[0]


def prompt_list(prompts):
    """prompts -> list. One bare str is refused: iterating it would give its characters as prompts."""
    if isinstance(prompts, str):
        raise ValueError(f"expected a list of prompts, got the single str {prompts!r}; pass [{prompts!r}]")
    return list(prompts)


def make_prompt(cat, objs, relation=None):
    """Inverse of parse_prompt."""
    if cat == "single":
        return f"a {objs[0][0]} {objs[0][1]}"
    if cat == "counting":
        n = {v: k for k, v in COUNT_WORDS.items()}[len(objs)]
        return f"{n} {objs[0][0]} {objs[0][1]}s"
    if cat == "two":
        return f"a {objs[0][0]} {objs[0][1]} and a {objs[1][0]} {objs[1][1]}"
    return f"a {objs[0][0]} {objs[0][1]} {relation} a {objs[1][0]} {objs[1][1]}"


def _pick(seq, generator):
    return seq[int(torch.randint(len(seq), (1,), generator=generator))]


def _random_obj(generator):
    return (_pick(COLOR_NAMES, generator), _pick(SHAPES, generator))


def sample_prompts(n, generator, categories=None):
    """n prompts from the grammar, categories uniform (or from `categories`)."""
    cats = tuple(categories) if categories else CATEGORIES
    for c in cats:
        if c not in CATEGORIES:
            raise ValueError(f"unknown category {c!r}; categories are {CATEGORIES}")
    out = []
    for _ in range(n):
        cat = _pick(cats, generator)
        if cat == "single":
            objs, rel = (_random_obj(generator),), None
        elif cat == "counting":
            objs, rel = (_random_obj(generator),) * _pick((2, 3, 4), generator), None
        else:
            a = _random_obj(generator)
            b = a
            while b == a:
                b = _random_obj(generator)
            objs, rel = (a, b), (_pick(RELATIONS, generator) if cat == "position" else None)
        out.append(make_prompt(cat, objs, rel))
    return out


def perturb_prompt(prompt, generator):
    """A minimally wrong prompt: one colour, shape, count or relation changed (still in the grammar)."""
    cat, objs, rel = parse_prompt(prompt)
    while True:
        new_objs, new_rel = list(objs), rel
        what = _pick(("color", "shape", "other"), generator)
        i = int(torch.randint(1 if cat in ("single", "counting") else 2, (1,), generator=generator))
        if what == "color":
            new_objs[i] = (_pick(COLOR_NAMES, generator), objs[i][1])
        elif what == "shape":
            new_objs[i] = (objs[i][0], _pick(SHAPES, generator))
        elif cat == "counting":
            new_objs = [objs[0]] * _pick((2, 3, 4), generator)
        elif cat == "position":
            new_rel = _pick(RELATIONS, generator)
        if cat == "counting" and what != "other":
            new_objs = [new_objs[0]] * len(objs)
        twins = len(new_objs) == 2 and cat != "counting" and new_objs[0] == new_objs[1]
        if (new_objs, new_rel) == (list(objs), rel) or twins:
            continue
        return make_prompt(cat, new_objs, new_rel)


# ---- Renderer

def _centroid_drop(shape, s):
    """How far below its box centre a shape's centroid lies (a triangle's is 2/3 down from the apex)."""
    return s / 6 if shape == "triangle" else 0.0


def object_sizes(H, grid=1):
    """The object sizes (pixels) allowed in an H x H image: between 1/4 and 3/8 of the side, multiples of grid."""
    if H < 16:
        raise ValueError(f"image_size must be >= 16, got {H}")
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    lo, hi = MIN_SIZE * H, MAX_SIZE * H
    sizes = [v for v in range(grid, H + 1, grid) if lo <= v <= hi]
    if not sizes:
        raise ValueError(f"no object size between {lo:g} and {hi:g} pixels is a multiple of grid={grid}")
    return sizes


def refuse_bad_scene_args(ap, args):
    """For the demos: args.n, args.image_size and args.grid must draw a scene, else argparse's usage error."""
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    try:
        object_sizes(args.image_size, args.grid)
    except ValueError as e:
        ap.error(str(e))


def _place(objs, rel, H, generator, tries=1000, grid=1):
    """Random (cx, cy, size) per object: inside the image, boxes >= gap apart, relation held.
    grid > 1 snaps sizes and box corners to multiples of grid pixels."""
    gap = max(2.0, H / 16)
    lo, hi = MIN_SIZE * H, MAX_SIZE * H
    sizes = object_sizes(H, grid)
    for attempt in range(tries):
        shrink = 1.0 - 0.5 * attempt / tries  # crowded scenes get smaller sizes as attempts fail
        u = torch.rand(len(objs), 3, generator=generator).tolist()
        # three or four objects: one per quadrant (in random order), so rejection rarely fails
        cells = torch.randperm(4, generator=generator).tolist() if len(objs) > 2 else None
        boxes = []
        for k, ((_, shape), (us, ux, uy)) in enumerate(zip(objs, u)):
            s = lo + (hi - lo) * us * shrink
            if cells is None:
                cx = 1 + s / 2 + ux * (H - 2 - s)
                cy = 1 + s / 2 + uy * (H - 2 - s)
            else:
                x0, y0 = (cells[k] % 2) * H / 2, (cells[k] // 2) * H / 2
                cx = x0 + 1 + s / 2 + ux * max(H / 2 - 2 - s, 0)
                cy = y0 + 1 + s / 2 + uy * max(H / 2 - 2 - s, 0)
            if rel is not None and k == 1:  # put the second object in line with the first, up to H/16
                ax, ay, a_s = boxes[0]
                jitter = (2 * ux - 1) * H / 16
                if rel in ("left of", "right of"):  # line up the centroids, not the boxes
                    cy = ay + _centroid_drop(objs[0][1], a_s) - _centroid_drop(shape, s) + jitter
                    cy = min(max(cy, 1 + s / 2), H - 1 - s / 2)
                else:
                    cx = min(max(ax + jitter, 1 + s / 2), H - 1 - s / 2)
            s = float(min(max(round(s), math.ceil(lo)), math.floor(hi)))  # integer geometry
            cx, cy = round(cx - s / 2) + s / 2, round(cy - s / 2) + s / 2
            if grid > 1:  # token-aligned objects: size and top-left corner on the grid
                s = float(min(sizes, key=lambda v: abs(v - s)))
                snap = lambda c: min(max(round((c - s / 2) / grid) * grid, 0), H - s) + s / 2
                cx, cy = snap(cx), snap(cy)
            boxes.append((cx, cy, s))
        ok = all(
            max(abs(a[0] - b[0]) - (a[2] + b[2]) / 2, abs(a[1] - b[1]) - (a[2] + b[2]) / 2) >= gap
            for i, a in enumerate(boxes) for b in boxes[:i]
        )
        if ok and rel is not None:
            # centroids must be on the named side by REL_MARGIN*H plus a pixel, and within H/16 on
            # the other axis so no other relation holds
            (ax, ay), (bx, by) = [(cx, cy + _centroid_drop(o[1], s)) for (cx, cy, s), o in zip(boxes, objs)]
            along, across = {"left of": (bx - ax, ay - by), "right of": (ax - bx, ay - by),
                             "above": (by - ay, ax - bx), "below": (ay - by, ax - bx)}[rel]
            ok = along >= REL_MARGIN * H + 1 and abs(across) <= H / 16
        if ok:
            return boxes
    raise RuntimeError(f"could not place {objs} in a {H}x{H} image")


def shape_distance(shape, dx, dy, size):
    """Signed distance in pixels (negative inside) of shape index `shape` (0 circle, 1 square, 2 triangle)
    at offsets (dx, dy) from its box centre, for box side `size` (all broadcast). The one definition of the
    three shapes: the renderer draws it and the verifier (rewards.py) matches components against it."""
    r = size / 2
    if shape == 0:
        return torch.sqrt(dx ** 2 + dy ** 2) - r
    if shape == 1:
        return torch.maximum(dx.abs(), dy.abs()) - r
    # upright triangle, base == height == size: bottom edge and two slanted edges (normals (+-2, -1)/sqrt5)
    dya = dy + r  # distance below the apex
    return torch.maximum(dy - r, torch.maximum(2 * dx - dya, -2 * dx - dya) / math.sqrt(5))


def shape_coverage(shape_ids, cx, cy, size, H):
    """Anti-aliased coverage (n, H, H) in [0, 1] of n shapes, from signed distances in pixels."""
    grid = torch.arange(H, device=cx.device) + 0.5
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    dx = xs - cx[:, None, None]  # (n, H, H)
    dy = ys - cy[:, None, None]
    sd = torch.stack([shape_distance(k, dx, dy, size[:, None, None]) for k in range(len(SHAPES))], 1)  # (n, 3, H, H)
    sd = sd.gather(1, shape_ids[:, None, None, None].expand(-1, 1, H, H))[:, 0]
    return (0.5 - sd).clamp(0, 1)


def render(prompts, image_size, generator, antialias=False, grid=1, device=None):
    """A random scene satisfying each prompt -> (B, 3, H, W) float in [0, 1].

    Shapes have integer sizes and positions and, by default, hard edges (a pixel is in when its
    centre is): that keeps the set of distinct 4x4 patches small (~1000), so a k-means codebook
    reconstructs scenes almost exactly. antialias=True draws soft edges instead (the verifier
    handles both). grid=p puts every object on the p x p patch grid (sizes and corners multiples
    of p): then each shape of each size is always the same few codes, which a small model learns
    far faster (train.py uses grid = patch). Placement draws from `generator` (CPU); the pixels are
    drawn on `device` (train.py renders its training batches straight onto the GPU)."""
    H, prompts = image_size, prompt_list(prompts)
    object_sizes(H, grid)  # refuses a size or grid with no room for an object before any work
    img_idx, colors, shapes, cxs, cys, sizes = [], [], [], [], [], []
    for b, p in enumerate(prompts):
        _, objs, rel = parse_prompt(p)
        for (color, shape), (cx, cy, s) in zip(objs, _place(objs, rel, H, generator, grid=grid)):
            img_idx.append(b); colors.append(COLOR_NAMES.index(color)); shapes.append(SHAPES.index(shape))
            cxs.append(cx); cys.append(cy); sizes.append(s)
    t = lambda v, dtype=torch.float32: torch.tensor(v, dtype=dtype, device=device)
    cov = shape_coverage(t(shapes, torch.long), t(cxs), t(cys), t(sizes), H)  # (n_obj, H, H)
    if not antialias:
        cov = (cov >= 0.5).float()
    rgb = PALETTE.to(device)[t(colors, torch.long)]  # (n_obj, 3)
    images = torch.zeros(len(prompts), 3, H, H, device=device)
    images.index_add_(0, t(img_idx, torch.long), cov[:, None] * rgb[:, :, None, None])
    return images.clamp(0, 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="The toy world: sample prompts and draw a scene for each.")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--grid", type=int, default=4, help="objects on this pixel grid (1: anywhere)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/world.png")
    args = ap.parse_args()
    refuse_bad_scene_args(ap, args)
    import os
    from report import save_grid
    g = torch.Generator().manual_seed(args.seed)
    prompts = sample_prompts(args.n, g)
    for p in prompts:
        print(f"{category(p):>9}  {p}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_grid(render(prompts, args.image_size, g, grid=args.grid), prompts, args.out)
    print(f"wrote {args.out}")
