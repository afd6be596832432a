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


def test_data_cells_hand_cases():
    cells = lambda m: set(torch.nonzero(m).flatten().tolist())
    first, second = probe.data_cells("left of", SIDE)  # first in columns 0-1, second in columns 2-3
    assert cells(first) == {0, 1, 4, 5, 8, 9, 12, 13} and cells(second) == {2, 3, 6, 7, 10, 11, 14, 15}
    first, second = probe.data_cells("below", SIDE)  # first in rows 2-3, second in rows 0-1
    assert cells(first) == set(range(8, 16)) and cells(second) == set(range(8))
    first, second = probe.data_cells("left of", 8)  # an 8x8 grid: the left and the right half
    assert cells(first) == {n for n in range(64) if n % 8 <= 3}
    assert cells(second) == {n for n in range(64) if n % 8 >= 4}


def test_order_right_hand_cases():
    top, bottom = torch.zeros(1, N), torch.zeros(1, N)
    top[0, :4], bottom[0, 12:] = 1, 1  # mass on the top row / the bottom row
    assert probe.order_right(top, bottom, ["above"], SIDE).tolist() == [True]
    assert probe.order_right(top, bottom, ["below"], SIDE).tolist() == [False]
    assert probe.order_right(top, bottom, ["left of"], SIDE).tolist() == [False]  # same mean column: a tie
    assert probe.swaps_of(("red", "circle"), ("blue", "square")) == (("red", "square"), ("blue", "circle"))


def stub_model():
    return SimpleNamespace(config=SimpleNamespace(n_tokens=N), mask_id=K, parameters=lambda: iter([torch.zeros(1)]))


def knowing_policy(states, prompts):
    """(P, N, K): a model that binds and knows relations: on the empty board the first object in the first
    column (or row) on its side, the second in the last."""
    out = torch.zeros(len(prompts), N, K)
    for i, p in enumerate(prompts):
        cat, (a, b), rel = world.parse_prompt(p)
        ka, kb = OBJECTS.index(a), OBJECTS.index(b)
        if cat == "two":
            out[i, :, ka] = out[i, :, kb] = 1
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
    if policy == "knowing":
        assert share == pytest.approx(0.0) and rel["order"] == 1.0 and rel["placement"] == pytest.approx(1.0, abs=0.01)
    elif policy == "bag of words":
        assert share == pytest.approx(0.5) and rel["order"] == 0.0  # equal mean positions: never on the side
        assert rel["placement"] == pytest.approx(0.5)  # one distribution for both objects: complementary halves


def test_part_labels_name_the_parts_of_each_object():
    """On the parallel world's codebook every object has parts of its own (a square's: the plain fill); the
    background none."""
    from model import VQCodebook
    g = torch.Generator().manual_seed(0)
    vq = VQCodebook.fit(world.render(world.sample_prompts(300, g), 32, g, grid=4), 64, 4, g)
    labels = probe.part_labels(vq, 32, 4)
    assert len(labels) == 64 and set(OBJECTS) == {lab for lab in labels if lab is not None}
    background = int(vq.encode(torch.zeros(1, 3, 32, 32))[0, 0])
    red_fill = int(vq.encode(world.PALETTE[0][None, :, None, None].expand(1, 3, 32, 32).contiguous())[0, 0])
    assert labels[background] is None and labels[red_fill] == ("red", "square")
