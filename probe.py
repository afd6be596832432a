"""
What a generator knows about a prompt's *structure* before it commits anything: binding and relations,
read off the guided policy on an empty board. RL can sharpen what these show; the
README ("Where RL stops") measured that it does not create it.

On the token-aligned board (grid = patch, both presets) each object is exactly one token, so a code
*is* an object, and the policy's probabilities on a fully masked board say where the model would put
which object. A model that reads the prompt as a bag of words scores about 50% on all three
measures (on order an exact tie counts as wrong; placement's 50% is the 4x4 board's, below):

  binding    "a C1 S1 and a C2 S2" with two colours and two shapes: the share of the policy's mass
             (summed over cells) on those four objects that goes to the two swaps, C1 S2 and C2 S1.
             0% is perfect binding.
  relations  "a C1 S1 REL a C2 S2", every ordered pair of different objects and every relation:
             order: the share of prompts whose first object's expected row (or column) on the
             empty board lies on the named side of the second's;
             placement: the share of each object's empty-board mass on the cells where the renderer
             can put it (the first with room for the second on the named side, a cell between them;
             the second likewise), averaged over the two objects. On a 4x4 board those are two
             complementary halves, so a model that gives both objects one distribution scores 50%.
             It is the first commit that decides a relation there: once one object is down, the
             partner's cell two along the line exists on one side only, so a conditional test
             would be trivial on the data's cells and off the data elsewhere.

Simplified: the masses are the one-step policy (CFG and temperature as the run samples, no Gumbel
choice noise); an object whose code the codebook lacks is skipped.

    python probe.py --ckpt out [--pretrained]
"""

import math

import torch

import rewards
import world
from model import encode_prompts
from sample import policy_logits


def object_labels(vq, side):
    """What each code draws alone on a black board: (colour, shape), or None (background, fragments)."""
    K, N = vq.codes.shape[0], side * side
    boards = torch.full((K, N), int(vq.codes.pow(2).sum(1).argmin()), device=vq.codes.device)  # black everywhere
    boards[:, side + 1] = torch.arange(K, device=boards.device)  # code k on one inner cell
    o = rewards.find_objects(vq.decode(boards).cpu())
    drawn = [[(world.COLOR_NAMES[c], (world.SHAPES + ("blob",))[s]) for i, c, s in
              zip(o["image"].tolist(), o["color"].tolist(), o["shape"].tolist()) if i == k] for k in range(K)]
    return [d[0] if len(d) == 1 and d[0][1] != "blob" else None for d in drawn]


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
    empty = torch.full((len(pairs), model.cfg.n_tokens), model.mask_id, device=dev)
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
    """(first, second), each (N,) bool: the cells where the renderer can put the first and the second
    object of "first REL second" (in line, with at least one empty cell between)."""
    x, sign = coordinate(rel, side)
    low, high = x <= side - 3, x >= 2  # room for a partner two or more cells further on / further back
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
    N = model.cfg.n_tokens
    side = math.isqrt(N)
    code = {}
    for k, lab in enumerate(labels):
        code.setdefault(lab, k)  # vq.encode picks the first of equal codes
    objs = [o for o in code if o is not None]
    cases = [(a, rel, b) for a in objs for b in objs if a != b for rel in world.RELATIONS]
    prompts = [world.make_prompt("position", (a, b), rel) for a, rel, b in cases]
    ka, kb = torch.tensor([code[a] for a, _, _ in cases]), torch.tensor([code[b] for _, _, b in cases])
    dev = next(model.parameters()).device
    p = policy_probs(model, torch.full((len(cases), N), model.mask_id, device=dev), prompts, cfg)  # (P, N, K)
    P = torch.arange(len(cases))
    order = order_right(p[P, :, ka], p[P, :, kb], [rel for _, rel, _ in cases], side).float().mean().item()
    cells = [data_cells(rel, side) for _, rel, _ in cases]
    on = lambda mass, where: ((mass * where).sum(1) / mass.sum(1).clamp(min=1e-12))  # (P,)
    first, second = torch.stack([f for f, _ in cells]), torch.stack([s for _, s in cells])  # (P, N)
    placement = ((on(p[P, :, ka], first) + on(p[P, :, kb], second)) / 2).mean().item()
    return dict(order=order, placement=placement, prompts=len(cases))


def report(model, cfg, labels):
    """The two measures as the lines focus.py and probe.py print."""
    if cfg.grid != cfg.patch or not any(labels):
        return f"binding and relations: not measured (they need one object per token, grid == patch; grid {cfg.grid})"
    share, n = binding(model, cfg, labels)
    rel = relations(model, cfg, labels)
    return (f"binding on the empty board ({n} prompts \"a C1 S1 and a C2 S2\", two colours and two shapes): "
            f"{share:.1%} of the mass on those four objects goes to the two swaps (0%: perfect binding, 50%: none)\n"
            f"relations on the empty board ({rel['prompts']} prompts \"a C1 S1 REL a C2 S2\"): the first object's "
            f"mean position is on the named side of the second's in {rel['order']:.1%} of prompts (50%: word order "
            f"unknown); {rel['placement']:.1%} of the two objects' mass is on cells where the renderer can put them "
            f"(50% on a 4x4 board: direction unknown)")


if __name__ == "__main__":
    import argparse

    import config

    ap = argparse.ArgumentParser(description="Binding and relations on the empty board, for a train.py run.")
    ap.add_argument("--ckpt", "--out", dest="ckpt", default="out", help="train.py's output folder")
    ap.add_argument("--pretrained", action="store_true", help="the pretrained weights instead of the RL ones")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    dev = config.pick_device(args.device)
    model, vq, cfg = config.load_generator(args.ckpt, dev, pretrained=args.pretrained)
    print(report(model, cfg, object_labels(vq, math.isqrt(model.cfg.n_tokens))))
