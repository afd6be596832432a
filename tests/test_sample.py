import copy
import itertools
import math
import time

import pytest
import torch

from model import MaskedTransformer, ModelConfig, encode_prompts
from torch.overrides import TorchFunctionMode

import bench
from bench import cost, forward_flops, time_interleaved
from sample import (commit_counts, commit_order, halton_order, mask_counts, near_positions, policy_logits, sample,
                    spread_top)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskedTransformer(ModelConfig(codebook_size=16, n_tokens=16, d_model=32, n_layers=1, n_heads=2)).eval()


def prompts(n):
    return encode_prompts(["a red circle", "three blue squares", "a green triangle above a red circle"][:n])


def test_mask_counts_by_hand():
    # N=16, T=4: floor(16 cos(pi/8 k)) = 14, 11, 6, then 0
    assert mask_counts(4, 16) == [14, 11, 6, 0]
    # T == N: one token per step, whatever the cosine says
    assert mask_counts(5, 5) == [4, 3, 2, 1, 0]
    for T in range(1, 17):
        c = [16] + mask_counts(T, 16)
        assert c[-1] == 0 and all(a > b for a, b in zip(c, c[1:]))
    with pytest.raises(ValueError):
        mask_counts(17, 16)
    assert commit_counts(4, 16) == [2, 3, 5, 6]  # 16 -> 14 -> 11 -> 6 -> 0


class HostReads(TorchFunctionMode):
    """Records every tensor operation that brings a value back to Python (on a GPU: a host sync)."""
    READS = {"__int__", "__index__", "__float__", "__bool__", "item", "tolist", "nonzero", "__len__"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["confidence", "spread", "halton", "stochastic"])
def test_sampler_never_reads_values_back(model, mode):
    # every step's commit count is known from the schedule, so the loop queues work without waiting on it
    with HostReads() as spy:
        sample(model, prompts(2), 4, cfg_scale=2.0, mode=mode, generator=torch.Generator().manual_seed(0))
    assert spy.seen == []
    with HostReads() as spy:  # the spy does see a read
        int(torch.ones(1).sum())
    assert spy.seen == ["__int__"]


@pytest.mark.parametrize("mode", ["confidence", "spread", "halton", "stochastic"])
def test_sampler_leaves_no_mask_and_trajectory_is_consistent(model, mode):
    ids = prompts(3)
    g = torch.Generator().manual_seed(0)
    tok, tr = sample(model, ids, 5, cfg_scale=2.0, mode=mode, generator=g, record=True, record_features=True)
    T, B, N = 5, 3, 16
    assert tok.shape == (B, N) and (tok < 16).all() and (tok >= 0).all()
    assert tr.states.shape == tr.committed.shape == tr.tokens.shape == tr.logp.shape == tr.x0.shape == (T, B, N)
    assert tr.features.shape == (T, B, N, 32)
    assert (tr.states[0] == model.mask_id).all()
    assert torch.equal(tr.final, tok)
    assert (tr.committed.sum(0) == 1).all()  # every position committed exactly once
    # replaying commits reproduces each next state and the final tokens
    state = tr.states[0].clone()
    for t in range(T):
        assert torch.equal(state, tr.states[t])
        assert (state[tr.committed[t]] == model.mask_id).all()  # only masked positions get committed
        state = torch.where(tr.committed[t], tr.tokens[t], state)
    assert torch.equal(state, tok)
    if mode != "stochastic":  # the schedule's counts
        counts = [N] + mask_counts(T, N)
        for t in range(T):
            assert (tr.committed[t].sum(1) == counts[t] - counts[t + 1]).all()
    # recorded log-probs are the policy's: recompute with the same CFG
    for t in range(T):
        lp = policy_logits(model, tr.states[t], ids, 2.0).log_softmax(-1)
        want = lp.gather(-1, tr.tokens[t][..., None])[..., 0]
        assert torch.allclose(want, tr.logp[t], atol=1e-5)


def test_halton_order_by_hand():
    # point i: column from i's base-2 digits mirrored, row from its base-3 digits, on an 8 x 8 grid:
    # i=1 -> (1/2, 1/3) -> column 4, row 2 -> 20; i=2 -> (1/4, 2/3) -> column 2, row 5 -> 42; i=3 -> (3/4, 1/9) -> 6
    assert halton_order(8)[:4] == (0, 20, 42, 6)
    assert halton_order(4)[:4] == (0, 6, 9, 3)  # on 4 x 4: (2, 1), (1, 2), (3, 0) as (column, row)
    for side in (1, 2, 3, 4, 8, 16):
        assert sorted(halton_order(side)) == list(range(side * side))  # every position once


def test_halton_commits_each_position_once_in_its_rolled_order(model):
    ids, T, N = prompts(3), 5, 16
    tok, tr = sample(model, ids, T, cfg_scale=2.0, mode="halton", generator=torch.Generator().manual_seed(1),
                     record=True)
    place = commit_order("halton", 3, N, torch.Generator().manual_seed(1), torch.device("cpu"))  # drawn first
    assert not torch.equal(place[0], place[1])  # each sample its own offset into the list
    rolled = [(place[b] - place[b, halton_order(4)[0]]) % N for b in range(3)]
    assert all(torch.equal(r, rolled[0]) for r in rolled)  # the same list, rolled
    cum = [0, *itertools.accumulate(commit_counts(T, N))]
    for t in range(T):  # step t commits the places cum[t] .. cum[t+1]-1 of each sample's order
        assert torch.equal(tr.committed[t], (place >= cum[t]) & (place < cum[t + 1]))
    again = sample(model, ids, T, cfg_scale=2.0, mode="halton", generator=torch.Generator().manual_seed(1))
    other = sample(model, ids, T, cfg_scale=2.0, mode="halton", generator=torch.Generator().manual_seed(2))
    assert torch.equal(tok, again) and not torch.equal(tok, other)


def test_spread_keeps_a_steps_uncertain_commits_apart_by_hand():
    # 4 x 4 grid: "near" is closer than 2, the 8 neighbours. Best candidates 0 (row 0, col 0), 1 (0, 1), 5 (1, 1),
    # 10 (2, 2): 1 and 5 touch 0, so the second commit is 10; the confidence order would take 0 and 1
    conf = torch.full((1, 16), -5.0)
    conf[0, [0, 1, 5, 10]] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    unsure = torch.zeros(1, 16, dtype=torch.bool)
    assert spread_top(conf, unsure, 2)[0].nonzero().flatten().tolist() == [0, 10]
    assert spread_top(conf, unsure, 3)[0].nonzero().flatten().tolist() == [0, 2, 10]  # 2 is 2 columns from 0
    sure = unsure.clone()
    sure[0, 1] = True  # a sure token may sit beside the pick: back to the confidence order
    assert spread_top(conf, sure, 2)[0].nonzero().flatten().tolist() == [0, 1]
    only = torch.full((1, 16), -math.inf)
    only[0, [0, 1]] = torch.tensor([2.0, 1.0])  # two candidates, both near: the ruled-out one fills up
    assert spread_top(only, unsure, 2)[0].nonzero().flatten().tolist() == [0, 1]
    near = near_positions(8, "cpu")  # 8 x 8: closer than 4
    assert near[0, 27] and not near[0, 28] and not near[0, 32] and near.sum(1).max() == 49


def test_spread_equals_confidence_order_when_every_token_is_sure():
    g = torch.Generator().manual_seed(0)
    conf = torch.randn(5, 64, generator=g)
    top = torch.zeros(5, 64, dtype=torch.bool).scatter_(1, conf.topk(7, dim=1).indices, True)
    assert torch.equal(spread_top(conf, torch.ones(5, 64, dtype=torch.bool), 7), top)
    picked = spread_top(conf, torch.zeros(5, 64, dtype=torch.bool), 4)  # 4 points pairwise 4 apart fit on 8 x 8
    near = near_positions(8, "cpu")
    for row in picked:
        idx = row.nonzero().flatten()
        assert len(idx) == 4 and not (near[idx][:, idx] & ~torch.eye(4, dtype=torch.bool)).any()


def test_sampler_is_reproducible(model):
    ids = prompts(3)
    a = sample(model, ids, 4, 1.0, generator=torch.Generator().manual_seed(5))
    b = sample(model, ids, 4, 1.0, generator=torch.Generator().manual_seed(5))
    c = sample(model, ids, 4, 1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_prompt_ids_and_zero_temperature_are_refused(model):
    """Each of these used to fail deep inside torch (cat, embedding) or, temperature 0, give nan logits and
    all-zero tokens without a word."""
    ids, g = prompts(2), torch.Generator().manual_seed(0)
    for bad, msg in [(ids[0], r"\(B, 8\) long .* got \(8,\)"), (ids.float(), "float32"), (ids[:, :5], r"got \(2, 5\)"),
                     (["a red circle"], "got list")]:
        with pytest.raises(ValueError, match=msg):
            sample(model, bad, 4, generator=g)
    with pytest.raises(ValueError, match=r"must be \(3, 8\) long"):  # the forward pass checks the batch too
        model(torch.zeros(3, 16, dtype=torch.long), ids)
    with pytest.raises(ValueError, match="temperature must be above 0"):
        sample(model, ids, 4, temperature=0.0, generator=g)


def test_cfg_scale_zero_is_the_conditional_pass(model):
    """w = 0 switches CFG off: the logits of w = 1 (uncond + 1 * (cond - uncond)) from one pass, not the
    unconditional logits; w = 2 moves away from both."""
    ids, state = prompts(2), torch.full((2, 16), model.mask_id)
    off, one, two = (policy_logits(model, state, ids, w) for w in (0.0, 1.0, 2.0))
    assert torch.allclose(off, one, atol=1e-5) and not torch.allclose(two, one, atol=1e-3)


def test_token_temperature_hook_is_used(model):
    ids = prompts(3)
    seen = {}

    def hot(logits, entropy, masked):
        seen["shape"] = entropy.shape
        return torch.full(masked.shape, 1e-4)  # near-greedy

    _, tr = sample(model, ids, 4, generator=torch.Generator().manual_seed(0), record=True, token_temperature=hot)
    assert seen["shape"] == (3, 16)
    assert tr.logp.max() <= 0 and (tr.logp[tr.committed] > -1e-3).all()  # near-greedy: log p ~ 0


def test_trajectory_frames_show_commits_and_mark_steps(model):
    from model import VQCodebook
    from report import trajectory_frames
    vq = VQCodebook(16, 2)
    vq.codes.copy_(torch.linspace(0.1, 1.0, 16)[:, None].expand(16, 12))  # code c: a flat grey patch, never black
    _, tr = sample(model, prompts(1), 4, generator=torch.Generator().manual_seed(0), record=True)
    plain = trajectory_frames(vq, tr)
    assert len(plain) == 5 and all(f.shape == (3, 8, 8) for f in plain)  # 16 tokens of 2x2 px
    assert (plain[0] == 0.3).all()  # nothing committed yet: all the masked grey
    lit = [int((f.view(3, 4, 2, 4, 2) != 0.3).any(4).any(2).any(0).sum()) for f in plain]  # tokens shown
    assert lit == [16 - c for c in [16] + mask_counts(4, 16)]
    frames = trajectory_frames(vq, tr, marked=[1])
    red = torch.tensor([0.9, 0.15, 0.15])[:, None]
    assert torch.allclose(frames[2][:, 0, :], red.expand(3, 8))  # the frame after step 1 has the border
    assert all(torch.equal(a, b) for i, (a, b) in enumerate(zip(frames, plain)) if i != 2)


def test_cost_counts_flops_and_ops_not_views():
    a, b = torch.randn(2, 3), torch.randn(4, 3)
    assert cost(lambda: (a @ b.t()).relu()) == (2 * 2 * 3 * 4, 2)  # matmul + relu; the transpose is a view
    assert cost(lambda: a.view(6)[1:].unsqueeze(0)) == (0, 0)
    assert cost(lambda: torch.cat([a, a]) + 1) == (0, 2)


def test_forward_flops_by_hand_and_as_torch_counts_them():
    cfg = ModelConfig(codebook_size=4, n_tokens=4, d_model=8, n_layers=1, n_heads=2)  # S = 8 words + 4 tokens = 12
    # a layer: 2 x (4 + 2 x 4) d^2 x S = 18432 (q, k, v, out, MLP) + attention 4 S^2 d = 4608; the head 2 d K N = 256
    assert forward_flops(cfg) == 18432 + 4608 + 256
    for cfg in (cfg, ModelConfig(codebook_size=16, n_tokens=16, d_model=32, n_layers=2, n_heads=4, mlp_ratio=2)):
        model = MaskedTransformer(cfg)
        x = torch.randint(0, cfg.codebook_size, (3, cfg.n_tokens))
        attention = cfg.n_layers * 4 * (cfg.prompt_len + cfg.n_tokens) ** 2 * cfg.d_model
        counted = cost(lambda: model(x, encode_prompts(["a red circle"] * 3)))[0]  # torch's counter skips the CPU's
        assert counted == 3 * (forward_flops(cfg) - attention)  # fused attention kernel: the matmuls agree exactly


def test_compiled_check_passes_the_compiled_trunk_and_catches_stale_weights(monkeypatch):
    model = MaskedTransformer(ModelConfig(codebook_size=16, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    errors = bench.compiled_check(model, batch=4)  # torch.compile, as --compile runs it
    assert len(errors) == 7 and max(errors.values()) < 1e-5, errors
    frozen = {}  # a broken compiled trunk that keeps the weights it first saw (what a stale CUDA graph would do)
    monkeypatch.setattr(bench, "compiled_features", lambda m, x, p: frozen.setdefault(
        tuple(x.shape), copy.deepcopy(m)).features(x, p))
    errors = bench.compiled_check(model, batch=4)
    assert errors["call 3"] == 0 and errors["after an in-place update"] > 0.01, errors


def test_time_interleaved_takes_every_row_in_turn_and_the_median(monkeypatch):
    clock, calls = [0.0], []
    durations = {0: [9.0, 1.0, 50.0, 2.0], 1: [9.0, 3.0, 3.0, 4.0]}  # warm-up first, then 3 rounds

    def fn(i):
        calls.append(i)
        clock[0] += durations[i][sum(c == i for c in calls) - 1]

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    secs = time_interleaved([lambda: fn(0), lambda: fn(1)], torch.device("cpu"), rounds=3)
    assert calls == [0, 1] * 4  # warm-up of each, then rounds that call every row in turn
    assert secs == [2.0, 3.0]  # medians of the timed rounds; the spike (50) and the warm-up (9) drop out
