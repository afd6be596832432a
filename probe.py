"""
What a generator knows about a prompt's *structure* before it commits anything: binding and relations,
read off the guided policy on an empty board. RL can sharpen what these show; the
docs/board-world.md, section 2 measured that it does not create it.

An object spans several tokens, and most codes are *parts* of one colour and shape (the top-left arc of
a red circle, the left slope of a blue triangle; a plain fill is mostly squares'); the background belongs
to none (part_labels). Summed over an object's parts, the policy's probabilities on
a fully masked board say where the model would put which object. A model that reads the prompt as a bag
of words scores about 50% on all three measures (on order an exact tie counts as wrong):

  binding    "a C1 S1 and a C2 S2" with two colours and two shapes: the share of the policy's mass
             (summed over cells) on those four objects that goes to the two swaps, C1 S2 and C2 S1.
             0% is perfect binding.
  relations  "a C1 S1 REL a C2 S2", every ordered pair of different objects and every relation:
             order: the share of prompts whose first object's expected row (or column) on the
             empty board lies on the named side of the second's;
             placement: the share of each object's empty-board mass on the named half of the grid
             (the first object's on the left half for "left of", the second's on the right half),
             averaged over the two objects: a model that gives both objects one distribution
             scores 50%.

Simplified: the masses are the one-step policy (CFG and temperature as the run samples, no Gumbel
choice noise); an object with no part of its own in the codebook is skipped. (On the older board world,
grid = patch = 8, a code is a whole object and the same measures read one code per object.)

    python probe.py --ckpt out [--pretrained]
"""

import math

import torch

import world
from model import encode_prompts
from sample import policy_logits


def part_labels(vq, image_size, grid, n=40, seed=0, share=1 / 2):
    """What each code is a part of: the (colour, shape) that holds more than `share` of the code's uses in
    renders of one object each, else None (the background, a part several shapes use alike). K labels.
    A square is all plain fill, which circles and triangles of its colour hold too, but far less of."""
    g = torch.Generator().manual_seed(seed)
    objs = [(c, s) for c in world.COLOR_NAMES for s in world.SHAPES]
    prompts = [world.make_prompt("single", [o]) for o in objs for _ in range(n)]
    tokens = vq.encode(world.render(prompts, image_size, g, grid=grid).to(vq.codes.device)).cpu()  # (12 n, N)
    uses = torch.stack([torch.bincount(tokens[i * n:(i + 1) * n].flatten(), minlength=vq.codebook_size)
                        for i in range(len(objs))]).float()  # (12, K)
    top, who = uses.max(0)
    return [objs[int(w)] if t > 0 and t > share * u else None for t, w, u in zip(top, who, uses.sum(0))]


@torch.no_grad()
def policy_probs(model, states, prompts, cfg, batch=512):
    """(P, N, K) probabilities of the guided one-step policy for P prompts on states (P, N)."""
    out = []
    for i in range(0, len(prompts), batch):
        ids = encode_prompts(prompts[i:i + batch]).to(states.device)
        logits = policy_logits(model, states[i:i + batch], ids, cfg.cfg_scale) / cfg.temperature
        out.append(logits.softmax(-1).cpu())
    return torch.cat(out)


def swaps_of(a, b):
    """'a red circle and a blue square' -> its swaps: a blue circle, a red square."""
    return (a[0], b[1]), (b[0], a[1])


def binding(model, cfg, labels, n=400):
    """(swap share, prompts used): the empty-board mass on the swaps over the mass on the four objects."""
    pairs = [world.parse_prompt(p)[1] for p in world.sample_prompts(n, torch.Generator().manual_seed(2), ["two"])]
    pairs = [(a, b) for a, b in pairs if a[0] != b[0] and a[1] != b[1]]  # two colours and two shapes
    dev = next(model.parameters()).device
    empty = torch.full((len(pairs), model.config.n_tokens), model.mask_id, device=dev)
    mass = policy_probs(model, empty, [world.make_prompt("two", ab) for ab in pairs], cfg).sum(1)  # (P, K)
    K = mass.shape[1]
    named = torch.tensor([[labels[k] in (a, b) for k in range(K)] for a, b in pairs])  # (P, K)
    swaps = torch.tensor([[labels[k] in swaps_of(a, b) for k in range(K)] for a, b in pairs])
    m_named, m_swap = (mass * named).sum(1), (mass * swaps).sum(1)  # (P,)
    seen = m_named + m_swap > 0  # a codebook that lacks those objects says nothing about binding
    return (m_swap[seen] / (m_named + m_swap)[seen]).mean().item(), int(seen.sum())


def coordinate(rel, side):
    """(x (N,), sign): each cell's column or row, whichever the relation is about, and +1 where the first
    object has the smaller one ("left of", "above"), -1 where it has the larger (row-major cells)."""
    x = torch.arange(side * side) % side if rel in ("left of", "right of") else torch.arange(side * side) // side
    return x, 1 if rel in ("left of", "above") else -1


def data_cells(rel, side):
    """(first, second), each (N,) bool: the named halves of the grid for the first and the second object
    of "first REL second" (the left and the right half for "left of")."""
    x, sign = coordinate(rel, side)
    low, high = x < side // 2, x >= side - side // 2
    return (low, high) if sign > 0 else (high, low)


def order_right(pa, pb, rels, side):
    """(P,) bool: the first object's expected coordinate (under its mass pa (P, N)) is on the named side
    of the second's (pb); rels: P relation names."""
    x, sign = zip(*(coordinate(rel, side) for rel in rels))
    x, sign = torch.stack(x).float(), torch.tensor(sign)  # (P, N), (P,)
    mean = lambda mass: (mass * x).sum(1) / mass.sum(1).clamp(min=1e-12)  # (P,)
    return sign * (mean(pb) - mean(pa)) > 0


def relations(model, cfg, labels):
    """{order, placement, prompts}: the two relation measures (module docstring)."""
    N = model.config.n_tokens
    side = math.isqrt(N)
    objs = list(dict.fromkeys(lab for lab in labels if lab is not None))
    parts = torch.tensor([[lab == o for lab in labels] for o in objs], dtype=torch.float32)  # (O, K)
    cases = [(a, rel, b) for a in objs for b in objs if a != b for rel in world.RELATIONS]
    prompts = [world.make_prompt("position", (a, b), rel) for a, rel, b in cases]
    dev = next(model.parameters()).device
    p = policy_probs(model, torch.full((len(cases), N), model.mask_id, device=dev), prompts, cfg)  # (P, N, K)
    pa = (p * parts[[objs.index(a) for a, _, _ in cases]][:, None]).sum(-1)  # (P, N) the first object's mass
    pb = (p * parts[[objs.index(b) for _, _, b in cases]][:, None]).sum(-1)  # (P, N) the second's
    order = order_right(pa, pb, [rel for _, rel, _ in cases], side).float().mean().item()
    cells = [data_cells(rel, side) for _, rel, _ in cases]
    on = lambda mass, where: ((mass * where).sum(1) / mass.sum(1).clamp(min=1e-12))  # (P,)
    first, second = torch.stack([f for f, _ in cells]), torch.stack([s for _, s in cells])  # (P, N)
    placement = ((on(pa, first) + on(pb, second)) / 2).mean().item()
    return dict(order=order, placement=placement, prompts=len(cases))


def report(model, cfg, labels):
    """The two measures as the lines focus.py and probe.py print."""
    if not any(labels):
        return f"binding and relations: not measured (no code is a part of one object alone; grid {cfg.grid})"
    share, n = binding(model, cfg, labels)
    rel = relations(model, cfg, labels)
    return (f"binding on the empty board ({n} prompts \"a C1 S1 and a C2 S2\", two colours and two shapes): "
            f"{share:.1%} of the mass on those four objects goes to the two swaps (0%: perfect binding, 50%: none)\n"
            f"relations on the empty board ({rel['prompts']} prompts \"a C1 S1 REL a C2 S2\"): the first object's "
            f"mean position is on the named side of the second's in {rel['order']:.1%} of prompts (50%: word order "
            f"unknown); {rel['placement']:.1%} of the two objects' mass is on their named halves of the grid "
            f"(50%: direction unknown)")


if __name__ == "__main__":
    import argparse

    import runs

    ap = argparse.ArgumentParser(description="Binding and relations on the empty board, for a train.py run.")
    ap.add_argument("--ckpt", "--out", dest="ckpt", default="out", help="train.py's output folder")
    ap.add_argument("--pretrained", action="store_true", help="the pretrained weights instead of the RL ones")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    dev = runs.pick_device(args.device)
    model, vq, cfg = runs.load_generator(args.ckpt, dev, pretrained=args.pretrained)
    print(report(model, cfg, part_labels(vq, cfg.image_size, cfg.grid)))
