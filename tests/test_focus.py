import math

import pytest
import torch

import focus
from model import MaskedTransformer, ModelConfig, encode_prompts
from sample import Trajectory


def hand_trajectory(T=6, B=3, N=16, K=10, jump=3, seed=0):
    """x0 holds unrelated tokens before step `jump` and the final tokens from it on."""
    g = torch.Generator().manual_seed(seed)
    final = torch.randint(5, K, (B, N), generator=g)
    x0 = torch.randint(0, 5, (T, B, N), generator=g)  # codes 0-4: disjoint from the final codes 5-9
    x0[jump:] = final
    committed = torch.zeros(T, B, N, dtype=torch.bool)
    for n in range(N):
        committed[min(n * T // N, T - 1), :, n] = True  # position n committed at step n*T//N
    z = torch.zeros(T, B, N)
    return Trajectory(states=torch.zeros(T, B, N, dtype=torch.long), committed=committed, tokens=x0.clone(),
                      logp=z, entropy=torch.rand(T, B, N, generator=g), x0=x0, features=None, final=final,
                      prompt_ids=torch.zeros(B, 8, dtype=torch.long), cfg_scale=0.0, temperature=1.0)


def test_critical_step_is_the_jump():
    emb = torch.eye(10)  # orthogonal codes: cos(x0_t, final) = fraction of positions equal to the final
    for jump in (1, 3, 5):
        traj = hand_trajectory(jump=jump)
        s = focus.step_similarity(traj, emb)
        assert torch.allclose(s[:, jump:], torch.ones(3, 6 - jump)) and (s[:, :jump] == 0).all()
        gain = focus.information_gain(traj, emb)  # (T,)
        # gain_t = |s_{t+1} - s_t| belongs to step t: the commits of step jump-1 made the prediction jump
        assert focus.critical_steps(gain, 1) == [jump - 1]
        assert gain[-1] == 0 and focus.information_gain(traj, emb, per_sample=True).shape == (3, 6)
    traj = hand_trajectory(jump=2)
    traj.x0[1:4, 1] = traj.final[1]  # sample 1's prediction jumps at step 0 instead
    per = focus.critical_steps(focus.information_gain(traj, emb, per_sample=True), 1)  # (B, 1)
    assert per.tolist() == [[1], [0], [1]]


def test_critical_tokens_count_disjoint_and_earliest():
    traj = hand_trajectory(T=6, B=4, N=16)
    for frac in (0.3, 0.5):
        crit = focus.critical_tokens(traj, group_size=2, frac=frac, embeddings=torch.eye(10))
        assert crit.shape == (4, 16) and crit.dtype == torch.bool
        assert (crit.sum(1) == round(frac * 16)).all()  # the three sets are disjoint: the union has them all
        # positions 0-2 are committed at step 0, the earliest: n1 of them (all 3 at frac 0.5) are in the set
        n1 = round(frac * 16 / 3)
        step0 = traj.committed[0]
        assert ((crit & step0).sum(1) >= min(n1, 3)).all()
    assert (focus.critical_tokens(traj, 2, 0.5)[:, :3]).all()
    with pytest.raises(ValueError, match="square token grid"):
        focus.critical_tokens(hand_trajectory(T=6, B=4, N=15), group_size=2)
    with pytest.raises(ValueError, match="whole groups"):
        focus.critical_tokens(traj, group_size=3)
    for frac in (0.0, 1.5):  # 1.5 would ask topk for more positions than there are
        with pytest.raises(ValueError, match=r"frac is the share of the N tokens to pick, in \(0, 1\]"):
            focus.critical_tokens(traj, group_size=2, frac=frac)


def test_group_similarity_by_hand():
    final = torch.tensor([[1, 2, 0], [1, 3, 0], [1, 4, 5], [7, 7, 7]])  # two groups of 2
    sim = focus.group_similarity(final, 2)  # token identity only
    assert torch.equal(sim, torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_entropy_edges_of_a_step():
    ent = torch.zeros(1, 36)
    ent.view(6, 6)[:, 3:] = 1.0  # a vertical edge between columns 2 and 3
    e = focus.entropy_edges(ent, 6).view(6, 6)
    assert (e[:, 2:4] > e[:, [1, 4]]).all() and (e[:, [1, 4]] > e[:, [0, 5]]).all()


def test_entropy_edges_one_sided_at_the_border():
    """Without smoothing, a linear ramp's gradient is its slope at border and interior cells alike
    (one-sided differences at the border, as GCPO; replicate padding gave the border half the slope)."""
    side = 6
    cols = torch.arange(side, dtype=torch.float32)
    for slope_x, slope_y in ((0.5, 0.0), (0.0, -2.0), (0.3, 0.4)):
        ramp = (slope_x * cols[None, :] + slope_y * cols[:, None]).reshape(1, -1)
        e = focus.entropy_edges(ramp, side, smooth=False)
        assert torch.allclose(e, torch.full_like(e, math.hypot(slope_x, slope_y))), e.view(side, side)
    # with the smoothing the border is flatter (fewer cells averaged): a/2, 3a/4, then a
    e = focus.entropy_edges(cols.repeat(side, 1).reshape(1, -1), side).view(side, side)
    assert torch.allclose(e[0], torch.tensor([0.5, 0.75, 1, 1, 0.75, 0.5]))


def test_routing_entropy_is_the_raw_logits_before_the_temperature():
    """MaskFocus routes on the entropy of the guided logits before any temperature."""
    from sample import sample_step
    logits = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    raw = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    state = torch.full((2, 5), 8)
    for temperature in (0.5, 1.0, 2.0):
        seen = []
        hook = lambda lg, ent, masked: seen.append(ent) or torch.ones(2, 5)
        sample_step(logits, state, 8, 0, 4, 2, "confidence", 4.5, torch.Generator().manual_seed(1), temperature, hook)
        assert torch.allclose(seen[0], raw)


def test_entropy_temperature_routes_only_confident_samples():
    ent = torch.tensor([[0.1, 0.2, 0.0], [3.0, 2.0, 1.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.3]])
    masked = torch.ones(4, 3, dtype=torch.bool)
    tau = focus.entropy_temperature(None, ent, masked)
    assert (tau[1] == 1).all() and (tau[2] == 1).all()  # at or above the median: untouched
    assert torch.allclose(tau[0], 2.5 * torch.exp(-ent[0] / 3) + 0.7)
    assert torch.allclose(tau[3], 2.5 * torch.exp(-ent[3] / 3) + 0.7)
    assert abs(tau[3, 0].item() - 3.2) < 1e-6  # a certain token gets the hottest temperature


def test_token_weights():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(2, 3, 5, generator=g)
    assert torch.equal(focus.token_weights(logp, logp.clone()), torch.ones(2, 3, 5))  # agree -> 1
    ref = torch.zeros(1, 4)
    lp = torch.tensor([[1.0, -0.2, 0.0, 0.3]])  # clip to 0.5, -0.2, 0, 0.3
    order = torch.tensor([[2, 0, 1, 3]])  # generation order: positions 1, 2, 0, 3
    w = focus.token_weights(lp, ref, order=order)
    e = [math.exp(-0.2), 1.0, math.exp(0.5), math.exp(0.3)]  # values in generation order
    run = [sum(e[:i + 1]) / (i + 1) for i in range(4)]
    assert torch.allclose(w, torch.tensor([[run[2], run[0], run[1], run[3]]]))
    for bad in (dict(logp=lp, ref_logp=torch.zeros(4)), dict(logp=lp, ref_logp=ref, mask=torch.ones(2, 4)),
                dict(logp=lp, ref_logp=ref, order=order.T)):  # these would broadcast, or fail deep in gather
        with pytest.raises(ValueError, match="share one shape"):
            focus.token_weights(**bad)


def test_token_weights_match_a_loop_over_the_generation_order():
    """GCPO's running mean, by hand: walk the positions in generation order, keep a running mean of
    exp(clip(logp - ref)) over every position that has a log-prob; each gets the mean so far."""
    g = torch.Generator().manual_seed(3)
    B, S, N = 2, 3, 7
    logp, ref = -torch.rand(B, S, N, generator=g) * 2, -torch.rand(B, S, N, generator=g) * 2
    has = torch.rand(B, S, N, generator=g) < 0.7
    order = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])  # (B, N) rank of each position
    w = focus.token_weights(logp, ref, has, order)
    for b in range(B):
        for s in range(S):
            total, n = 0.0, 0
            for pos in sorted(range(N), key=lambda p: int(order[b, p])):
                if not has[b, s, pos]:
                    assert w[b, s, pos] == 1
                    continue
                total += math.exp(max(-0.5, min(0.5, float(logp[b, s, pos] - ref[b, s, pos]))))
                n += 1
                assert abs(w[b, s, pos].item() - total / n) < 1e-5


def test_rl_step_weighs_over_every_scored_token_before_the_loss_mask():
    """GCPO weighs before it restricts the loss to critical tokens: weigh_tokens sees every scored
    position, the loss only the picked ones."""
    import grpo
    torch.manual_seed(0)
    model = MaskedTransformer(ModelConfig(codebook_size=8, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    ref = MaskedTransformer(model.config).requires_grad_(False)
    seen = {}
    pick = lambda traj: torch.zeros(traj.final.shape, dtype=torch.bool).index_fill_(1, torch.tensor([0, 5]), True)
    weigh = lambda old, r, mask, traj: seen.setdefault("mask", mask) is None or torch.ones_like(old)
    s = grpo.rl_step(model, ref, torch.optim.AdamW(model.parameters()), encode_prompts(["a red circle"]),
                     lambda tok: (tok == 3).float().mean(1), dict(steps=4), grpo.GRPOConfig(group_size=4),
                     score_steps="all", tokens=(pick, weigh), generator=torch.Generator().manual_seed(0))
    assert seen["mask"].shape == (4, 4, 16) and seen["mask"].sum() > 4 * 4 * 2  # more than the picked positions
    assert s["scored_tokens"] <= 4 * 2  # the loss: picked positions only (at most 2 per step)


def test_rl_step_runs_every_focus_variant():
    """grpo.rl_step with focus.py's hooks: every switch train.rl_update turns."""
    import grpo
    torch.manual_seed(0)
    model = MaskedTransformer(ModelConfig(codebook_size=8, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    ref = MaskedTransformer(model.config).requires_grad_(False)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = encode_prompts(["a red circle", "two blue squares"])
    score = lambda tok: (tok == 3).float().mean(1)
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for steps, tokens, routing, per in [("all", "all", "off", 0), ("random", "all", "off", 0),
                                        ("focus", "all", "off", 0),
                                        ("focus", "all", "off", 1), ("focus", "critical", "off", 1),
                                        ("focus", "critical", "entropy", 0)]:
        kw = dict(steps=6, mode="stochastic")
        if routing == "entropy":
            kw["token_temperature"] = focus.entropy_temperature
        hooks = focus.gcpo_hooks(4, emb) if tokens == "critical" else None
        chosen = {"all": "all", "random": 2}[steps] if steps != "focus" else focus.focus_steps(emb, 2, bool(per))
        s = grpo.rl_step(model, ref, opt, ids, score, kw, grpo.GRPOConfig(group_size=4), score_steps=chosen,
                         tokens=hooks, generator=torch.Generator().manual_seed(2))
        assert s["scored_steps"] == (6 if steps == "all" else 2)
        assert math.isfinite(s["kl"]) and s["skipped"] == 0
        if tokens == "critical":
            assert s["scored_tokens"] <= 2 * round(0.3 * 16)  # at most the critical set per scored step
