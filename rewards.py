"""
The toy shapes world: a prompt grammar, a renderer, an exact verifier (the RL reward)
and a distribution-level quality metric (an FID analogue). Everything else in the repo
stands on this file, so it has no project imports.

The world (see DESIGN.md): black background, four colours, three shapes (circle,
square, upright triangle), object size between 1/4 and 3/8 of the image side, objects
never touch. Four GenEval-style prompt categories:

    single    a red circle
    two       a red circle and a blue square            (the two objects differ)
    counting  three green triangles                     (two, three or four)
    position  a yellow square above a red triangle      (the two objects differ)

The verifier looks at pixels only, so it works on images from any source (this
renderer, Pillow's ImageDraw, the VQ decoder, a generator being trained):

  1. colour: each pixel is explained as alpha * palette_colour (alpha fitted by least
     squares for each of the four colours, the best fit wins); alpha >= 0.5 is foreground.
  2. objects: 8-connected components of same-colour foreground pixels, found by label
     propagation (max-pooling with pointer jumping), batched on the whole tensor.
     Components under 30% of the smallest legal object's area are specks and ignored.
  3. shape: which corners of its bounding box the component's colour fills (alpha read
     from the image, so soft edges count): a square all four, an upright triangle the
     bottom two (its base), a disc none; the fill ratio area / (widest row * tallest
     column) must agree (square ~1, disc ~pi/4, triangle ~1/2). A component whose size,
     aspect ratio or corner pattern fits no shape is a "blob", which never matches.

Reward (partial credit, used by RL). Let M be the multiset of (colour, shape) the prompt
names and D the multiset found. full = |M & D| (objects right in colour and shape); of
the objects left over on both sides, colour-only matches and shape-only matches count
a quarter each. reward = (full + (colour_only + shape_only) / 4) / max(|M|, |D|), and
for `position` prompts it is halved unless both named objects are found exactly once
and the first one's centroid lies on the named side of the second's by >= H/8.
The reward is 1.0 exactly when the prompt is satisfied, and below 1.0 otherwise.

Quality metric: Frechet distance between Gaussian fits of a fixed, hand-made feature
space (no training, no download): the image average-pooled to 8x8 (colour layout,
192 numbers) and the gradient magnitude of its grey level average-pooled to 4x4 in x
and y separately (edge placement and sharpness, 32 numbers). It is an FID analogue:
0 for identical distributions, growing as layouts, colours or edges drift.
"""

import argparse
import functools
import math
import time

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------
# The world

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
BLOB = len(SHAPES)  # shape index of a component that is no legal shape


# ----------------------------------------------------------------------------------
# Prompts: parse, build, sample

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
        raise ValueError(f"prompt {prompt!r} is outside the grammar (see rewards.py docstring)")
    if objs[0] == objs[1]:
        raise ValueError(f"prompt {prompt!r} names the same object twice; the two objects must differ")
    return category, objs, relation


def category(prompt):
    return parse_prompt(prompt)[0]


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
        if (new_objs, new_rel) == (list(objs), rel) or (len(new_objs) == 2 and cat != "counting" and new_objs[0] == new_objs[1]):
            continue
        return make_prompt(cat, new_objs, new_rel)


# ----------------------------------------------------------------------------------
# Renderer

def _centroid_drop(shape, s):
    """How far below its box centre a shape's centroid lies (a triangle's is 2/3 down from the apex)."""
    return s / 6 if shape == "triangle" else 0.0


def _place(objs, rel, H, generator, tries=1000, grid=1):
    """Random (cx, cy, size) per object: inside the image, boxes >= gap apart, relation held.
    grid > 1 snaps sizes and box corners to multiples of grid pixels."""
    gap = max(2.0, H / 16)
    lo, hi = MIN_SIZE * H, MAX_SIZE * H
    sizes = [v for v in range(grid, H + 1, grid) if lo <= v <= hi]
    if not sizes:
        raise ValueError(f"no object size between {lo} and {hi} is a multiple of grid={grid}")
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


def shape_coverage(shape_ids, cx, cy, size, H):
    """Anti-aliased coverage (n, H, H) in [0, 1] of n shapes, from signed distances in pixels."""
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(H) + 0.5, indexing="ij")
    dx = xs - cx[:, None, None]  # (n, H, H)
    dy = ys - cy[:, None, None]
    r = size[:, None, None] / 2
    circle = torch.sqrt(dx ** 2 + dy ** 2) - r
    square = torch.maximum(dx.abs(), dy.abs()) - r
    # upright triangle, base == height == size: bottom edge and two slanted edges (normals (+-2, -1)/sqrt5)
    dya = dy + r  # distance below the apex
    triangle = torch.maximum(dy - r, torch.maximum(2 * dx - dya, -2 * dx - dya) / math.sqrt(5))
    sd = torch.stack([circle, square, triangle], 1).gather(1, shape_ids[:, None, None, None].expand(-1, 1, H, H))[:, 0]
    return (0.5 - sd).clamp(0, 1)


def render(prompts, image_size, generator, antialias=False, grid=1):
    """A random scene satisfying each prompt -> (B, 3, H, W) float in [0, 1].

    Shapes have integer sizes and positions and, by default, hard edges (a pixel is in when its
    centre is): that keeps the set of distinct 4x4 patches small (~1000), so a k-means codebook
    reconstructs scenes almost exactly. antialias=True draws soft edges instead (the verifier
    handles both). grid=p puts every object on the p x p patch grid (sizes and corners multiples
    of p): then each shape of each size is always the same few codes, which a small model learns
    far faster (train.py uses grid = patch)."""
    H = image_size
    if H < 16:
        raise ValueError(f"image_size must be >= 16, got {H}")
    img_idx, colors, shapes, cxs, cys, sizes = [], [], [], [], [], []
    for b, p in enumerate(prompts):
        _, objs, rel = parse_prompt(p)
        for (color, shape), (cx, cy, s) in zip(objs, _place(objs, rel, H, generator, grid=grid)):
            img_idx.append(b); colors.append(COLOR_NAMES.index(color)); shapes.append(SHAPES.index(shape))
            cxs.append(cx); cys.append(cy); sizes.append(s)
    cov = shape_coverage(torch.tensor(shapes), torch.tensor(cxs), torch.tensor(cys), torch.tensor(sizes), H)
    if not antialias:
        cov = (cov >= 0.5).float()
    rgb = PALETTE[torch.tensor(colors)]  # (n_obj, 3)
    images = torch.zeros(len(prompts), 3, H, H)
    images.index_add_(0, torch.tensor(img_idx, dtype=torch.long), cov[:, None] * rgb[:, :, None, None])
    return images.clamp(0, 1)


# ----------------------------------------------------------------------------------
# Verifier

def check_images(images, n_prompts=None):
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (B, 3, H, H), got {tuple(images.shape)}")
    if images.shape[2] < 16:
        raise ValueError(f"images must be at least 16x16, got {images.shape[2]}")
    if images.numel() and (images.min() < -1e-4 or images.max() > 1 + 1e-4 or not torch.isfinite(images).all()):
        raise ValueError(f"image values must lie in [0, 1], got [{images.min():.3f}, {images.max():.3f}]")
    if n_prompts is not None and n_prompts != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {n_prompts} prompts")


def find_objects(images):
    """Objects in (B, 3, H, W) images -> dict of per-object tensors (n,): image, color, shape, area, cx, cy.

    Works on the list of foreground pixels, not the dense grid (objects cover ~10% of it):
    row runs of same-colour pixels, then a union of runs that touch across rows (8-connected).
    """
    B, _, H, W = images.shape
    x = images.reshape(B, 3, H * W)
    bright = x.amax(1).view(-1)  # (B*HW,)
    cand = (bright > 0.3).nonzero()[:, 0]  # flat indices b*HW + y*W + x, sorted; alpha >= 0.5 needs > 0.43
    rgb = x[cand // (H * W), :, cand % (H * W)]  # (n, 3)
    pal = PALETTE.to(rgb)  # (4, 3)
    dots = rgb @ pal.T  # (n, 4)
    cls = (dots ** 2 / (pal * pal).sum(1)).argmax(1)  # least-squares fit rgb ~ alpha * colour
    alpha = dots.gather(1, cls[:, None])[:, 0] / (pal * pal).sum(1)[cls]
    f, cls = cand[alpha >= 0.5], cls[alpha >= 0.5]  # foreground pixels and their colour
    if len(f) == 0:
        return {k: torch.zeros(0, dtype=torch.long if k in ("image", "color", "shape") else torch.float32)
                for k in ("image", "color", "shape", "area", "cx", "cy")}

    # 1. row runs: a pixel continues a run if its left neighbour is foreground of the same colour
    cont = torch.zeros_like(f, dtype=torch.bool)
    cont[1:] = (f[1:] - f[:-1] == 1) & (f[1:] % W != 0) & (cls[1:] == cls[:-1])
    run = torch.cumsum(~cont, 0) - 1  # (n,) run id of each pixel
    R = int(run[-1]) + 1
    run_cls = torch.zeros(R, dtype=torch.long).index_put_((run,), cls)
    runmap = torch.full((B * H * W,), -1, dtype=torch.long)
    runmap[f] = run

    # 2. edges between runs in adjacent rows. Two runs touch iff one's first pixel touches the other,
    # so looking up and down from each run's first pixel finds every edge.
    s = f[~cont]  # (R,) first pixel of each run
    sy, sx = (s % (H * W)) // W, s % W
    src, dst = [], []
    for dy in (-1, 1):
        for dx in (-1, 0, 1):
            ok = (sy + dy >= 0) & (sy + dy < H) & (sx + dx >= 0) & (sx + dx < W)
            nb = torch.where(ok, runmap[(s + dy * W + dx).clamp(0, B * H * W - 1)], -1)
            ok &= (nb >= 0) & (run_cls[nb.clamp(min=0)] == run_cls)
            src.append(ok.nonzero()[:, 0]); dst.append(nb[ok])
    src, dst = torch.cat(src), torch.cat(dst)

    # 3. connected runs share the smallest run id: min-label propagation with pointer jumping
    lab = torch.arange(R)
    while True:
        m = torch.minimum(lab[src], lab[dst])
        new = lab.scatter_reduce(0, src, m, "amin").scatter_reduce(0, dst, m, "amin")
        new = new[new]
        if torch.equal(new, lab):
            break
        lab = new
    is_root = lab == torch.arange(R)
    comp_of_run = (torch.cumsum(is_root, 0) - 1)[lab]
    comp = comp_of_run[run]  # (n,) component id per pixel
    n = int(is_root.sum())

    # 4. per-component statistics
    ys, xs = ((f % (H * W)) // W).float(), (f % W).float()
    ones = torch.ones_like(ys)
    area = torch.zeros(n).index_add_(0, comp, ones)
    cx = torch.zeros(n).index_add_(0, comp, xs) / area
    cy = torch.zeros(n).index_add_(0, comp, ys) / area
    y0 = torch.full((n,), 1e9).scatter_reduce(0, comp, ys, "amin")
    y1 = torch.full((n,), -1.0).scatter_reduce(0, comp, ys, "amax")
    x0 = torch.full((n,), 1e9).scatter_reduce(0, comp, xs, "amin")
    x1 = torch.full((n,), -1.0).scatter_reduce(0, comp, xs, "amax")
    rows = torch.zeros(n * H).index_add_(0, comp * H + ys.long(), ones).view(n, H).amax(1)
    cols = torch.zeros(n * W).index_add_(0, comp * W + xs.long(), ones).view(n, W).amax(1)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    fill = area / (rows * cols)
    image = torch.zeros(n, dtype=torch.long).index_put_((comp,), f // (H * W))
    color = torch.zeros(n, dtype=torch.long).index_put_((comp,), cls)
    # alpha of the component's colour at its four box corners: a square fills all four, an upright
    # triangle the bottom two (its base), a disc none. This is what tells a small disc from a square.
    corners = torch.stack([y0 * W + x0, y0 * W + x1, y1 * W + x0, y1 * W + x1], 1).long()  # (n, 4)
    crgb = x[image[:, None], :, corners]  # (n, 4, 3)
    c_alpha = (crgb * pal[color][:, None]).sum(-1) / (pal * pal).sum(1)[color][:, None]  # (n, 4)
    top, bottom = c_alpha[:, :2].mean(1), c_alpha[:, 2:].mean(1)
    shape = torch.full((n,), BLOB)
    on, off = 0.15, 0.12  # a half-covered edge row gives a square corner alpha ~0.25; noise ~0.05
    shape[(top > on) & (bottom > on) & (fill > 0.7)] = SHAPES.index("square")
    shape[(top < off) & (bottom < off) & (fill > 0.55) & (fill < 0.97)] = SHAPES.index("circle")
    shape[(top < off) & (bottom > on) & (fill > 0.4) & (fill < 0.8)] = SHAPES.index("triangle")
    side = torch.maximum(w, h)
    legal = (side >= 0.6 * MIN_SIZE * H) & (side <= 1.35 * MAX_SIZE * H + 1) & (w / h > 0.7) & (w / h < 1.43)
    shape[~legal] = BLOB
    keep = area >= 0.3 * (MIN_SIZE * H) ** 2 / 2  # smaller components are specks
    out = dict(image=image, color=color, shape=shape, area=area, cx=cx, cy=cy, fill=fill, top=top, bottom=bottom)
    return {k: v[keep] for k, v in out.items()}


@functools.lru_cache(maxsize=65536)
def _prompt_row(prompt):
    """Per prompt: counts of named objects over (colour, shape) cells, and the position targets."""
    cat, objs, r = parse_prompt(prompt)
    want = [0.0] * (len(COLORS) * (len(SHAPES) + 1))
    for c, s in objs:
        want[COLOR_NAMES.index(c) * (len(SHAPES) + 1) + SHAPES.index(s)] += 1
    rel = [-1] * 5  # colour1, shape1, colour2, shape2, relation
    if cat == "position":
        (c1, s1), (c2, s2) = objs
        rel = [COLOR_NAMES.index(c1), SHAPES.index(s1), COLOR_NAMES.index(c2), SHAPES.index(s2), RELATIONS.index(r)]
    return want, rel


def _prompt_table(prompts):
    rows = [_prompt_row(p) for p in prompts]
    want = torch.tensor([w for w, _ in rows]).view(len(prompts), len(COLORS), len(SHAPES) + 1)  # (B, 4, 4)
    rel = torch.tensor([r for _, r in rows], dtype=torch.long).view(len(prompts), 5)  # (B, 5)
    return want, rel


@torch.no_grad()
def reward(images, prompts):
    """(B, 3, H, H) images in [0, 1] and B prompts -> (B,) reward in [0, 1]; 1.0 iff satisfied."""
    prompts = list(prompts)
    check_images(images, len(prompts))
    images = images.detach().float().cpu().clamp(0, 1)
    B, H = images.shape[0], images.shape[2]
    want, rel = _prompt_table(prompts)  # (B, 4, 4), (B, 5)
    if B == 0:
        return torch.zeros(0)
    o = find_objects(images)
    cell = o["image"] * want[0].numel() + o["color"] * want.shape[2] + o["shape"]
    got = torch.zeros(want.numel()).index_add_(0, cell, torch.ones(len(cell))).view_as(want)
    pos = torch.zeros(want.numel(), 2).index_add_(0, cell, torch.stack([o["cx"], o["cy"]], 1)).view(*want.shape, 2)
    both = torch.minimum(want, got)
    full = both.sum((1, 2))
    lw, lg = want - both, got - both  # left-over objects on both sides
    color_only = torch.minimum(lw.sum(2), lg.sum(2)).sum(1)
    shape_only = torch.minimum(lw.sum(1), lg.sum(1)).sum(1)
    r = (full + 0.25 * (color_only + shape_only)) / torch.maximum(want.sum((1, 2)), got.sum((1, 2)))
    is_pos = rel[:, 0] >= 0
    if is_pos.any():
        bi = torch.arange(B)
        c1, s1, c2, s2, rr = rel.clamp(min=0).T
        once = (got[bi, c1, s1] == 1) & (got[bi, c2, s2] == 1)
        d = pos[bi, c1, s1] - pos[bi, c2, s2]  # (B, 2) centroid of first minus second
        m = REL_MARGIN * H
        side = torch.stack([-d[:, 0], d[:, 0], -d[:, 1], d[:, 1]], 1).gather(1, rr[:, None])[:, 0] >= m
        r = torch.where(is_pos & ~(once & side), 0.5 * r, r)
    return r


def accuracy_report(rewards, prompts):
    """{overall, single, two, counting, position}: fraction of samples with reward 1.0 (nan if none)."""
    ok = (torch.as_tensor(rewards) >= 1.0).float()
    cats = [category(p) for p in prompts]
    out = {"overall": ok.mean().item() if len(ok) else float("nan")}
    for c in CATEGORIES:
        sel = [i for i, x in enumerate(cats) if x == c]
        out[c] = ok[sel].mean().item() if sel else float("nan")
    return out


# ----------------------------------------------------------------------------------
# Quality metric (FID analogue)

def quality_features(images):
    """(B, 3, H, H) -> (B, 224): 8x8 colour layout + 4x4 pooled |d/dx| and |d/dy| of grey level."""
    check_images(images)
    x = images.detach().float()
    layout = F.adaptive_avg_pool2d(x, 8).flatten(1)  # (B, 192)
    g = x.mean(1, keepdim=True)
    gx = F.adaptive_avg_pool2d((g[..., :, 1:] - g[..., :, :-1]).abs(), 4).flatten(1) * 4  # (B, 16)
    gy = F.adaptive_avg_pool2d((g[..., 1:, :] - g[..., :-1, :]).abs(), 4).flatten(1) * 4
    return torch.cat([layout, gx, gy], 1)


def frechet_distance(feats_a, feats_b):
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), in float64 (no scipy needed)."""
    a, b = feats_a.double(), feats_b.double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    ev, evec = torch.linalg.eigh(sa)
    sqrt_sa = evec @ torch.diag(ev.clamp(min=0).sqrt()) @ evec.T
    cross = torch.linalg.eigvalsh(sqrt_sa @ sb @ sqrt_sa).clamp(min=0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + sa.trace() + sb.trace() - 2 * cross)


def quality(images_a, images_b):
    """The FID analogue between two image sets (lower is closer)."""
    return frechet_distance(quality_features(images_a), quality_features(images_b))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="The toy world: benchmark the verifier and draw a grid of verdicts.")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000, help="images in the benchmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=int, default=1, help="objects on this pixel grid (train.py uses 8)")
    ap.add_argument("--out", default="out/rewards_grid.png")
    args = ap.parse_args()
    import os
    g = torch.Generator().manual_seed(args.seed)
    prompts = sample_prompts(args.n, g)
    t0 = time.perf_counter()
    images = render(prompts, args.image_size, g, grid=args.grid)
    t_render = time.perf_counter() - t0
    reward(images[:16], prompts[:16])  # warm-up
    t0 = time.perf_counter()
    r = reward(images, prompts)
    t_reward = time.perf_counter() - t0
    wrong = [perturb_prompt(p, g) for p in prompts]
    rw = reward(images, wrong)
    print(f"rendered {args.n} {args.image_size}x{args.image_size} scenes in {t_render:.2f}s")
    print(f"reward: {args.n} images in {t_reward:.3f}s ({args.n / t_reward:,.0f} images/s, {torch.get_num_threads()} threads)")
    noisy = (images + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    for name, x in (("clean", images), ("noise std 0.03", noisy)):
        ok, rej = (reward(x, prompts) >= 1).float().mean(), (reward(x, wrong) < 1).float().mean()
        print(f"{name:>15}: true prompt satisfied {ok:.2%}, minimally wrong prompt rejected {rej:.2%}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    k = 16  # half true prompts, half wrong ones
    show_p = prompts[:k // 2] + wrong[:k // 2]
    show_r = torch.cat([r[:k // 2], rw[:k // 2]])
    from report import save_grid, verdict_captions
    save_grid(torch.cat([images[:k // 2], images[:k // 2]]), verdict_captions(show_p, show_r), args.out)
    print(f"wrote {args.out} (top row: true prompts, bottom row: minimally wrong prompts)")
