import itertools
from types import SimpleNamespace

import pytest
import torch

import probe
import world

SIDE, N = 4, 16
OBJECTS = list(itertools.product(world.COLOR_NAMES, world.SHAPES))  # code k draws OBJECTS[k]; 12, 13: none
LABELS = OBJECTS + [None, None]
K = len(LABELS)


def test_holds_hand_cases():
    cells = lambda m: set(torch.nonzero(m).flatten().tolist())
    # the first object on cell 5 (row 1, column 1) of a 4x4 board
    assert cells(probe.holds("left of", 5, SIDE)) == {2, 3, 6, 7, 10, 11, 14, 15}  # the second in columns 2-3
    assert cells(probe.holds("right of", 5, SIDE)) == {0, 4, 8, 12}
    assert cells(probe.holds("above", 5, SIDE)) == set(range(8, 16))
    assert cells(probe.holds("below", 5, SIDE)) == {0, 1, 2, 3}
    assert not probe.holds("left of", 3, SIDE).any()  # nothing is right of the last column


def test_order_right_hand_cases():
    top, bottom = torch.zeros(1, N), torch.zeros(1, N)
    top[0, :4], bottom[0, 12:] = 1, 1  # mass on the top row / the bottom row
    assert probe.order_right(top, bottom, ["above"], SIDE).tolist() == [True]
    assert probe.order_right(top, bottom, ["below"], SIDE).tolist() == [False]
    assert probe.order_right(top, bottom, ["left of"], SIDE).tolist() == [False]  # same mean column: a tie
    assert probe.swaps_of(("red", "circle"), ("blue", "square")) == (("red", "square"), ("blue", "circle"))


def stub_model():
    return SimpleNamespace(cfg=SimpleNamespace(n_tokens=N), mask_id=K, parameters=lambda: iter([torch.zeros(1)]))


def knowing_policy(states, prompts):
    """(P, N, K): a model that binds and knows relations. Empty board: the first object in column/row 0 of its
    side, the second on the far side; one object placed: the second only where the relation holds."""
    out = torch.zeros(len(prompts), N, K)
    for i, p in enumerate(prompts):
        cat, (a, b), rel = world.parse_prompt(p)
        ka, kb = OBJECTS.index(a), OBJECTS.index(b)
        placed = (states[i] != K).nonzero().flatten().tolist()
        if cat == "two":
            out[i, :, ka] = out[i, :, kb] = 1
        elif placed:
            out[i, :, kb] = probe.holds(rel, placed[0], SIDE).float()
        else:
            first, second = {"left of": (0, 3), "right of": (3, 0), "above": (0, 3), "below": (3, 0)}[rel]
            axis = torch.arange(N) % SIDE if rel in ("left of", "right of") else torch.arange(N) // SIDE
            out[i, :, ka], out[i, :, kb] = (axis == first).float(), (axis == second).float()
        out[i, :, K - 1] += 1  # some background mass everywhere
    return out / out.sum(-1, keepdim=True)


def geometry_only_policy(states, prompts):
    """(P, N, K): where objects go (in line, two cells apart) but not which is which: a placed object's
    partner goes two cells away on either side along the relation's axis."""
    out = torch.full((len(prompts), N, K), 0.01)
    r, c = torch.arange(N) // SIDE, torch.arange(N) % SIDE
    for i, p in enumerate(prompts):
        _, (a, b), rel = world.parse_prompt(p)
        placed = (states[i] != K).nonzero().flatten().tolist()
        if placed:
            pr, pc = divmod(placed[0], SIDE)
            line = (r == pr) & ((c - pc).abs() == 2) if rel in ("left of", "right of") else (c == pc) & ((r - pr).abs() == 2)
            out[i, :, OBJECTS.index(b)] += line.float()
    return out / out.sum(-1, keepdim=True)


def bag_of_words_policy(states, prompts):
    """(P, N, K): every named colour with every named shape, alike on every cell."""
    out = torch.full((len(prompts), N, K), 0.1)
    for i, p in enumerate(prompts):
        objs = world.parse_prompt(p)[1]
        for c, s in itertools.product({o[0] for o in objs}, {o[1] for o in objs}):
            out[i, :, OBJECTS.index((c, s))] = 1
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("policy", ["knowing", "bag of words", "geometry only"])
def test_probes_tell_a_knowing_model_from_a_bag_of_words(policy, monkeypatch):
    fn = dict(knowing=knowing_policy, geometry=geometry_only_policy).get(policy.split()[0], bag_of_words_policy)
    monkeypatch.setattr(probe, "policy_probs", lambda model, states, prompts, cfg: fn(states.cpu(), prompts))
    cfg = SimpleNamespace(cfg_scale=2.0, temperature=1.0)
    share, n = probe.binding(stub_model(), cfg, LABELS)
    rel = probe.relations(stub_model(), cfg, LABELS)
    assert n > 100 and rel["prompts"] == 12 * 11 * 4
    if policy == "knowing":
        assert share == pytest.approx(0.0) and rel["order"] == 1.0 and rel["side"] == pytest.approx(1.0)
    elif policy == "bag of words":
        assert share == pytest.approx(0.5) and rel["order"] == 0.0  # equal mean positions: never on the side
        # the first object in column 1: 8 cells right of it, 4 left (2/3); in column 2: 1/3; the mean is 1/2
        assert rel["side"] == pytest.approx(0.5)
    else:  # the partner two cells away exists on one side only (4x4 board): all-or-nothing, 1/2 on average
        assert rel["side"] == pytest.approx(0.5, abs=0.01)
