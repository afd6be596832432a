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


def test_first_commit_by_hand():
    traj = hand_trajectory(T=6, B=3, N=16, K=10)  # position n committed at step n*6//16
    traj.final[:] = 0  # background everywhere...
    traj.final[0, 9] = traj.final[0, 5] = 7  # ...sample 0: objects at 9 (step 3) and 5 (step 1)
    traj.final[1, 15] = 8  # sample 1: one object, committed at the last step; sample 2: none
    step, pos = focus.first_commit(traj, torch.arange(10) >= 5)
    assert step.tolist() == [1, 5, -1] and pos.tolist() == [5, 15, -1]


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
    ent = torch.zeros(1, 16)
    ent.view(4, 4)[:, 2:] = 1.0  # a vertical edge between columns 1 and 2
    e = focus.entropy_edges(ent, 4).view(4, 4)
    assert (e[:, 1:3] > e[:, [0]]).all() and (e[:, 1:3] > e[:, [3]]).all()


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


def test_focus_rl_step_runs_every_variant():
    torch.manual_seed(0)
    model = MaskedTransformer(ModelConfig(codebook_size=8, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    ref = MaskedTransformer(model.cfg).requires_grad_(False)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = encode_prompts(["a red circle", "two blue squares"])
    score = lambda tok: (tok == 3).float().mean(1)
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for steps, tokens, routing, per in [("all", "all", "off", 0), ("random", "all", "off", 0), ("focus", "all", "off", 0),
                                        ("focus", "all", "off", 1), ("focus", "critical", "off", 1),
                                        ("focus", "critical", "entropy", 0)]:
        s = focus.rl_step(model, ref, opt, ids, score, 4, dict(steps=6, mode="stochastic"), steps=steps, k=2,
                          tokens=tokens, routing=routing, embeddings=emb, per_sample=bool(per),
                          generator=torch.Generator().manual_seed(2))
        assert s["scored_steps"] == (6 if steps == "all" else 2)
        assert math.isfinite(s["kl"]) and s["skipped"] == 0
        if tokens == "critical":
            assert s["scored_tokens"] <= 2 * round(0.3 * 16)  # at most the critical set per scored step
