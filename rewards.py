"""
The verifier of the toy world (world.py): an exact reward for RL and accuracy per category,
and a distribution-level quality metric (an FID analogue).

The verifier looks at pixels only, so it works on images from any source (this
renderer, Pillow's ImageDraw, the VQ decoder, a generator being trained):

  1. colour: each pixel is explained as alpha * palette_colour (alpha fitted by least
     squares for each of the four colours, the best fit wins); alpha >= 0.5 is foreground.
  2. objects: 8-connected components of same-colour foreground pixels (row runs joined across rows),
     batched on the whole tensor. Components under SPECK pixels (less than half a 4x4 patch) are specks
     and ignored; anything larger counts, so a stray patch is an extra object.
  3. shape: each component against the three shapes drawn at its own box (world.shape_distance, the
     renderer's own geometry, hard-edged: a pixel is in when its centre is). The closest shape (fewest
     disagreeing pixels) is the component's shape if every pixel where the two disagree is a sliver: on
     the template's edge (its centre within TOL = 1 pixel of the outline, by world.shape_distance: to the
     circle, or to the nearest side of the square and the triangle) and in no 2x2 block of
     disagreeing pixels. That accepts what two rasterisers or a half-pixel shift disagree on (one-pixel
     bands along an edge) and nothing thicker: a patch of another shape's part, a missing or extra patch,
     a gap through the middle. Otherwise the component is a "blob" (a mismatched part), which never
     matches a prompt; so is one whose box is outside the world's sizes (1/4 to 3/8 of the side, a pixel
     and a half either way) or not square within a pixel (a 12x10 rectangle is no square).

  Accepted, measured in tests/test_rewards.py: this renderer hard-edged and anti-aliased, on the token
  grid and anywhere; Pillow's ImageDraw plain and 4x supersampled at sub-pixel offsets; all with
  Gaussian noise of std 0.03; the VQ codebook's reconstructions of on-grid scenes (lossless), and of 99%
  or more of scenes placed anywhere (K=1024 is nearly lossless there). Refused: every hybrid the
  codebook can make by swapping one token of a shape for another shape's token at the same place, where
  that changes at least 8 pixels (at 32 and 64 px).

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
import time

import torch
import torch.nn.functional as F

from world import (CATEGORIES, COLOR_NAMES, COLORS, MAX_SIZE, MIN_SIZE, PALETTE, REL_MARGIN, RELATIONS, SHAPES,
                   category, parse_prompt, prompt_list, shape_distance)

VERSION = 2  # of the shape test (1: box corners and fill ratio); runs.py refuses stage checkpoints scored by another
BLOB = len(SHAPES)  # shape index of a component that is no legal shape (a blob: a mismatched part)
SPECK = 6  # components of fewer pixels are specks and ignored (a 4x4 patch is 16)
TOL = 1.0  # a pixel whose centre lies within this of a shape's outline may disagree with it (a sliver)

# ---- Verifier

def check_images(images, n_prompts=None):
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (B, 3, H, H), got {tuple(images.shape)}")
    if images.shape[2] < 16:
        raise ValueError(f"images must be at least 16x16, got {images.shape[2]}")
    lo, hi = torch.aminmax(images) if images.numel() else (0, 0)  # one pass; a NaN comes out as NaN
    if not (-1e-4 <= lo <= hi <= 1 + 1e-4):
        raise ValueError(f"image values must lie in [0, 1], got [{lo:.3f}, {hi:.3f}]")
    if n_prompts is not None and n_prompts != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {n_prompts} prompts")


def find_objects(images, pixels=False):
    """Objects in (B, 3, H, W) images -> dict of per-object tensors (n,): image, color, shape, area, cx, cy,
    misfit (match_shapes'); with pixels=True also the map (B, H, W) of each pixel's object (-1: none or a speck).

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
        none = {k: torch.zeros(0, dtype=torch.long if k in ("image", "color", "shape", "misfit") else torch.float32)
                for k in ("image", "color", "shape", "area", "cx", "cy", "misfit")}
        return (none, torch.full((B, H, W), -1)) if pixels else none

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
    image = torch.zeros(n, dtype=torch.long).index_put_((comp,), f // (H * W))
    color = torch.zeros(n, dtype=torch.long).index_put_((comp,), cls)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    labels = torch.full((B * H * W,), -1, dtype=torch.long)
    labels[f] = comp
    shape, misfit = match_shapes(labels.view(B, H, W), image, x0, y0, w, h)
    keep = area >= SPECK  # smaller components are specks
    out = dict(image=image, color=color, shape=shape, area=area, cx=cx, cy=cy, misfit=misfit)
    out = {k: v[keep] for k, v in out.items()}
    if not pixels:
        return out
    kept_id = torch.where(keep, torch.cumsum(keep, 0) - 1, -1)  # (n,) the id among the kept objects
    return out, torch.cat([kept_id, torch.tensor([-1])])[labels].view(B, H, W)  # labels -1 -> the appended -1


def match_shapes(labels, image, x0, y0, w, h):
    """Each component against the three shapes drawn at its own box (step 3 of the module docstring).

    labels: (B, H, W) component id per pixel (-1 background); image, x0, y0, w, h: (n,) per component.
    -> shape (n,) (BLOB when no shape fits), misfit (n,): the closest shape's disagreeing pixels off its
    edge plus its 2x2 blocks of disagreeing pixels (0 when it fits). The closest shape is the one with
    the fewest disagreeing pixels: an 8-pixel disc and square differ by only 3 pixels a corner."""
    B, H, W = labels.shape
    n = len(image)
    side = torch.maximum(w, h)
    legal = (side >= MIN_SIZE * H - 1.5) & (side <= MAX_SIZE * H + 1.5) & ((w - h).abs() <= 1)  # square boxes
    L = int(MAX_SIZE * H + 1.5) + 2  # a window of the largest legal box and a pixel around it
    uv = torch.arange(L, dtype=torch.float32)
    xs = x0[:, None] - 1 + uv  # (n, L) image column of each window column
    ys = y0[:, None] - 1 + uv  # (n, L) image row of each window row
    inside = ((xs >= 0) & (xs < W))[:, None, :] & ((ys >= 0) & (ys < H))[:, :, None]  # (n, L, L)
    rows, cols = ys.long().clamp(0, H - 1)[:, :, None], xs.long().clamp(0, W - 1)[:, None, :]
    flat = (image[:, None, None] * H + rows) * W + cols  # (n, L, L) flat pixel index
    comp = torch.arange(n)
    mine = (labels.view(-1)[flat] == comp[:, None, None]) & inside  # (n, L, L) this component's pixels

    # the shapes at the box: disc and square centred in it (side: the box's mean), the triangle standing on
    # its bottom edge (side: its width; a small upright triangle's apex row can be empty)
    dx = (xs + 0.5 - (x0 + w / 2)[:, None])[:, None, :]  # (n, 1, L) pixel centres from the box centre
    dy = (ys + 0.5 - (y0 + h / 2)[:, None])[:, :, None]  # (n, L, 1)
    s = ((w + h) / 2)[:, None, None]
    sd = torch.stack([shape_distance(0, dx, dy, s), shape_distance(1, dx, dy, s),
                      shape_distance(2, dx, dy + (w - h)[:, None, None] / 2, w[:, None, None])], 1)  # (n, 3, L, L)
    drawn = (sd <= 0).float().flatten(2)  # (n, 3, L*L) each shape's pixels
    m = mine.float().flatten(1)  # (n, L*L)
    n_diff = drawn.sum(2) + m.sum(1, keepdim=True) - 2 * (drawn @ m[:, :, None])[..., 0]  # (n, 3) |mine xor drawn|
    best = n_diff.argmin(1)  # (n,) the closest shape

    sd = sd[comp, best]  # (n, L, L)
    diff = mine ^ (sd <= 0)  # (n, L, L) where the component and its closest shape disagree
    block = diff[:, :-1, :-1] & diff[:, 1:, :-1] & diff[:, :-1, 1:] & diff[:, 1:, 1:]  # (n, L-1, L-1) 2x2 all wrong
    misfit = (diff & (sd.abs() > TOL)).flatten(1).sum(1) + block.flatten(1).sum(1)  # (n,) 0: only slivers
    return torch.where(legal & (misfit == 0), best, BLOB), misfit


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


def _tally(images, prompts):
    """What the prompts name and what the verifier finds, as counts over (colour, shape) cells: want, got
    (B, 4 colours, 3 shapes + blob), centroid sums per cell (B, 4, 4, 2), position targets (B, 5)."""
    want, rel = _prompt_table(prompts)  # (B, 4, 4), (B, 5)
    o = find_objects(images.detach().float().cpu().clamp(0, 1))
    cell = o["image"] * want[0].numel() + o["color"] * want.shape[2] + o["shape"]
    got = torch.zeros(want.numel()).index_add_(0, cell, torch.ones(len(cell))).view_as(want)
    pos = torch.zeros(want.numel(), 2).index_add_(0, cell, torch.stack([o["cx"], o["cy"]], 1)).view(*want.shape, 2)
    return want, got, pos, rel


def _score(want, got, pos, rel, H):
    both = torch.minimum(want, got)
    full = both.sum((1, 2))
    lw, lg = want - both, got - both  # left-over objects on both sides
    color_only = torch.minimum(lw.sum(2), lg.sum(2)).sum(1)
    shape_only = torch.minimum(lw.sum(1), lg.sum(1)).sum(1)
    r = (full + 0.25 * (color_only + shape_only)) / torch.maximum(want.sum((1, 2)), got.sum((1, 2)))
    is_pos = rel[:, 0] >= 0
    if is_pos.any():
        bi = torch.arange(len(r))
        c1, s1, c2, s2, rr = rel.clamp(min=0).T
        once = (got[bi, c1, s1] == 1) & (got[bi, c2, s2] == 1)
        d = pos[bi, c1, s1] - pos[bi, c2, s2]  # (B, 2) centroid of first minus second
        side = torch.stack([-d[:, 0], d[:, 0], -d[:, 1], d[:, 1]], 1).gather(1, rr[:, None])[:, 0] >= REL_MARGIN * H
        r = torch.where(is_pos & ~(once & side), 0.5 * r, r)
    return r


@torch.no_grad()
def reward(images, prompts):
    """(B, 3, H, H) images in [0, 1] and B prompts -> (B,) reward in [0, 1]; 1.0 iff satisfied."""
    prompts = prompt_list(prompts)
    check_images(images, len(prompts))
    if not prompts:
        return torch.zeros(0)
    return _score(*_tally(images, prompts), images.shape[-1])


FAILURES = ("ok", "too few objects", "too many objects", "mismatched parts", "colours and shapes swapped",
            "wrong colour or shape", "wrong position")


@torch.no_grad()
def failure_modes(images, prompts):
    """Why each sample fails: B names from FAILURES, the first that applies in that order.
    "mismatched parts": an object that is no legal shape (a blob). With objects of 2x2 to 3x3 tokens it
    is what parallel decoding gets wrong: one step commits tokens that do not belong together (the top
    row of a square over the body of a circle, the left of a triangle beside the right of a circle).
    A sample that holds a blob and fails for an earlier reason too counts under that reason: for the
    share of samples with any mismatched part at all, see mismatched_parts.
    "colours and shapes swapped": the right colours and the right shapes, bound to each other
    wrongly ("a red circle and a blue square" drawn as a blue circle and a red square)."""
    prompts = prompt_list(prompts)
    check_images(images, len(prompts))
    if not prompts:
        return []
    want, got, pos, rel = _tally(images, prompts)
    ok = _score(want, got, pos, rel, images.shape[-1]) >= 1
    n_want, n_got = want.sum((1, 2)), got.sum((1, 2))
    differ = (want != got).flatten(1).any(1)
    same_marginals = (want.sum(2) == got.sum(2)).all(1) & (want.sum(1) == got.sum(1)).all(1)
    tests = [ok, n_got < n_want, n_got > n_want, got[:, :, BLOB].sum(1) > 0, same_marginals & differ, differ]
    out = torch.full((len(prompts),), len(FAILURES) - 1)  # none applies: right objects, wrong relation
    for i in reversed(range(len(tests))):
        out = torch.where(tests[i], i, out)
    return [FAILURES[i] for i in out.tolist()]


@torch.no_grad()
def mismatched_parts(images):
    """(B, 3, H, H) -> (B,) bool: the image holds an object of no legal shape (a blob), whatever else is
    wrong with it."""
    check_images(images)
    o = find_objects(images.detach().float().cpu().clamp(0, 1))
    return torch.zeros(len(images), dtype=torch.bool).index_fill_(0, o["image"][o["shape"] == BLOB], True)


@torch.no_grad()
def blamed_tokens(images, prompts, grid):
    """(B, 3, H, H) images and B prompts -> (B, grid * grid) bool: the tokens (grid x grid patches, row-major) that
    hold a pixel of an object no reading of the prompt can use: a blob, or a (colour, shape) pair the prompt never
    names (a red square under "a red circle", though the reward gives it a quarter's partial credit). The rest of a
    failure (too few objects, one too many of a named kind, the wrong side) is no one object's fault and is not
    blamed. For per-object credit in RL (grpo.object_advantages; beyond the papers)."""
    prompts = prompt_list(prompts)
    check_images(images, len(prompts))
    H = images.shape[-1]
    if grid < 1 or H % grid:
        raise ValueError(f"grid must divide the image side {H}, got {grid}")
    if not prompts:
        return torch.zeros(0, grid * grid, dtype=torch.bool)
    want, _ = _prompt_table(prompts)  # (B, 4 colours, 3 shapes + blob); the blob column is always 0
    o, owner = find_objects(images.detach().float().cpu().clamp(0, 1), pixels=True)  # owner (B, H, W)
    bad = want[o["image"], o["color"], o["shape"]] == 0  # (n,) a blob, or a kind the prompt never names
    pix = torch.cat([bad, torch.tensor([False])])[owner]  # (B, H, W); owner -1 -> the appended False
    return F.max_pool2d(pix[:, None].float(), H // grid)[:, 0].flatten(1) > 0


ANY_MISMATCH = "any mismatched part"  # not a first reason: the share of samples that hold a blob at all


def failure_report(modes, prompts, mismatched):
    """{overall and each category: {mode: share of its samples}} from failure_modes' names, plus
    ANY_MISMATCH: the share whose image holds a blob (mismatched_parts), whatever reason came first."""
    cats = [category(p) for p in prompts]
    out = {}
    for c in ("overall",) + CATEGORIES:
        mine = [i for i, x in enumerate(cats) if c in ("overall", x)]
        n = max(1, len(mine))
        out[c] = {m: sum(modes[i] == m for i in mine) / n for m in FAILURES}
        out[c][ANY_MISMATCH] = sum(bool(mismatched[i]) for i in mine) / n
    return out


def accuracy_report(rewards, prompts):
    """{overall, single, two, counting, position}: fraction of samples with reward 1.0 (nan if none)."""
    ok = (torch.as_tensor(rewards) >= 1.0).float()
    cats = [category(p) for p in prompts]
    out = {"overall": ok.mean().item() if len(ok) else float("nan")}
    for c in CATEGORIES:
        sel = [i for i, x in enumerate(cats) if x == c]
        out[c] = ok[sel].mean().item() if sel else float("nan")
    return out


# ---- Quality metric (FID analogue)

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
    # python rewards.py: the verifier's speed and verdicts on 2,000 scenes of the CPU preset's world (32x32, objects
    # on the 4-pixel grid), with true and minimally wrong prompts; tests/drawings.py measures every other kind
    import os

    from report import save_grid, verdict_captions
    from world import perturb_prompt, refuse_bad_scene_args, render, sample_prompts
    ap = argparse.ArgumentParser(description="The toy world: benchmark the verifier and draw a grid of verdicts.")
    for name, default in [("image-size", 32), ("n", 2000), ("seed", 0), ("grid", 4)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--out", default="out/rewards_grid.png")
    refuse_bad_scene_args(ap, args := ap.parse_args())
    g = torch.Generator().manual_seed(args.seed)
    prompts = sample_prompts(args.n, g)
    images = render(prompts, args.image_size, g, grid=args.grid)
    wrong = [perturb_prompt(p, g) for p in prompts]
    reward(images[:16], prompts[:16])  # warm-up
    t0 = time.perf_counter()
    r, rw = reward(images, prompts), reward(images, wrong)
    seconds = time.perf_counter() - t0
    print(f"reward: {2 * args.n} {args.image_size}x{args.image_size} images in {seconds:.3f}s, "
          f"{2 * args.n / seconds:,.0f} images/s ({torch.get_num_threads()} threads)")
    noisy = (images + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    for name, x in (("clean", images), ("noise std 0.03", noisy)):
        ok, rej = (reward(x, prompts) >= 1).float().mean(), (reward(x, wrong) < 1).float().mean()
        print(f"{name:>15}: true prompt satisfied {ok:.2%}, minimally wrong prompt rejected {rej:.2%}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    captions = verdict_captions(prompts[:8] + wrong[:8], torch.cat([r[:8], rw[:8]]))
    save_grid(torch.cat([images[:8], images[:8]]), captions, args.out)
    print(f"wrote {args.out} (top row: true prompts, bottom row: minimally wrong prompts)")
