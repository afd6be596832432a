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


def bag_of_words_policy(states, prompts):
    """(P, N, K): every named colour with every named shape, alike on every cell."""
    out = torch.full((len(prompts), N, K), 0.1)
    for i, p in enumerate(prompts):
        objs = world.parse_prompt(p)[1]
        for c, s in itertools.product({o[0] for o in objs}, {o[1] for o in objs}):
            out[i, :, OBJECTS.index((c, s))] = 1
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("policy", ["knowing", "bag of words"])
def test_probes_tell_a_knowing_model_from_a_bag_of_words(policy, monkeypatch):
    fn = knowing_policy if policy == "knowing" else bag_of_words_policy
    monkeypatch.setattr(probe, "policy_probs", lambda model, states, prompts, cfg: fn(states.cpu(), prompts))
    cfg = SimpleNamespace(cfg_scale=2.0, temperature=1.0)
    share, n = probe.binding(stub_model(), cfg, LABELS)
    rel = probe.relations(stub_model(), cfg, LABELS)
    assert n > 100 and rel["prompts"] == 12 * 11 * 4
    # a uniform guess over the other 15 cells, averaged over the cells that leave room: (12 + 8 + 4) / 15 / 3
    assert rel["uniform"] == pytest.approx(24 / 45)
    if policy == "knowing":
        assert share == pytest.approx(0.0) and rel["order"] == 1.0 and rel["given_first"] == pytest.approx(1.0)
    else:
        assert share == pytest.approx(0.5) and rel["order"] == 0.0  # equal mean positions: never on the side
        assert rel["given_first"] == pytest.approx(rel["uniform"])
