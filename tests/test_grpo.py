import math

import pytest
import torch

import grpo
from grpo import group_advantages, grpo_loss, ratio_masks, remask_logp, remask_masks, replay_logp
from model import MaskedTransformer, ModelConfig, encode_prompts
from sample import sample


def test_group_advantages_by_hand():
    """The papers' form: (r - mean) / (std + eps) with the unbiased std (n - 1 in the variance)."""
    adv, flat = group_advantages(torch.tensor([0.0, 1.0, 0.0, 1.0]), 4, eps=0.0)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]) * 0.5 / math.sqrt(1 / 3))  # +-0.866
    assert abs(adv[1].item() - 0.8660254) < 1e-6 and flat == 0
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0])
    adv, flat = group_advantages(r, 4, eps=1e-4)
    s = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # group 1: mean 0.5, unbiased std sqrt(1/3)
    assert torch.allclose(adv[:4], torch.tensor([s, -s, s, -s]))
    assert (adv[4:8] == 0).all()  # all equal: zero advantage, not 0/0
    std3 = 0.5  # group 3: mean 1/4, unbiased variance (3 * 1/16 + 9/16) / 3 = 1/4
    assert torch.allclose(adv[8:], torch.tensor([-0.25, -0.25, -0.25, 0.75]) / (std3 + 1e-4))
    assert abs(flat - 1 / 3) < 1e-6
    for bad in (0, 1):  # one sample has no group to compare with (and no unbiased std)
        with pytest.raises(ValueError, match=f"multiple of group_size={bad}"):
            group_advantages(r, bad)


def test_step_pooling_weighs_every_step_alike():
    """Two scored steps: step 0 scores 1 token, step 1 scores 3. Token pooling: (a + b + c + d) / 4;
    MaskFocus's step pooling: (a + (b + c + d) / 3) / 2."""
    x = torch.tensor([[[4.0, 9.0, 9.0, 9.0], [9.0, 1.0, 2.0, 6.0]]])  # (B=1, S=2, N=4)
    mask = torch.tensor([[[True, False, False, False], [False, True, True, True]]])
    assert abs(grpo.pool_mean(x, mask, "token").item() - (4 + 1 + 2 + 6) / 4) < 1e-6
    assert abs(grpo.pool_mean(x, mask, "step").item() - (4 + (1 + 2 + 6) / 3) / 2) < 1e-6
    # through grpo_loss: rho = 1, beta = 0, so the loss is the pooled -A; the advantage differs per sample
    logp = torch.zeros(2, 2, 4)
    m2 = torch.cat([mask, mask.flip(-1)])  # sample 1: step 0 scores position 3, step 1 positions 0-2
    adv = torch.tensor([1.0, -2.0])
    tok, _ = grpo_loss(logp, logp, logp, adv, m2, beta=0.0, pool="token")
    step, _ = grpo_loss(logp, logp, logp, adv, m2, beta=0.0, pool="step")
    assert abs(tok.item() - (-(1 * 4 - 2 * 4) / 8)) < 1e-6  # 4 tokens at A = 1, 4 at A = -2
    assert abs(step.item() - (-(1 - 2) / 2 + -(3 - 6) / 6) / 2) < 1e-6  # each step: its own token mean
    with pytest.raises(ValueError, match="pool must be"):
        grpo.pool_mean(x, mask, "sample")


def test_replay_trains_only_the_conditional_branch():
    """The null prompt's word embedding is reached only through CFG's unconditional pass (real prompts
    never hold <null>): with the branch detached, the replayed log-prob gives it no gradient at all,
    though the value is the guided policy's, unchanged."""
    from model import WORD_ID
    from sample import policy_logits
    m = tiny_model()
    ids = encode_prompts(["a red circle", "two blue squares"])
    _, tr = sample(m, ids, 4, cfg_scale=2.0, generator=torch.Generator().manual_seed(0), record=True)
    null = WORD_ID["<null>"]
    lp, mask = replay_logp(m, tr, [0, 1])
    lp[mask].sum().backward()
    assert (m.word_emb.weight.grad[null] == 0).all() and m.word_emb.weight.grad.abs().sum() > 0
    m.zero_grad()
    both = policy_logits(m, tr.states[0], ids, 2.0).log_softmax(-1)  # not detached: the null prompt learns
    both.gather(-1, tr.tokens[0][..., None]).sum().backward()
    assert m.word_emb.weight.grad[null].abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(policy_logits(m, tr.states[0], ids, 2.0, detach_uncond=True),
                              policy_logits(m, tr.states[0], ids, 2.0))
    # under autograd the detached branch runs apart and builds no graph: the trunk sees 2 rows with a graph, 2 without
    seen = []
    hook = m.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape[0], out.requires_grad)))
    split = policy_logits(m, tr.states[0], ids, 2.0, detach_uncond=True)
    hook.remove()
    assert sorted(seen) == [(2, False), (2, True)]
    with torch.no_grad():
        assert torch.allclose(split, policy_logits(m, tr.states[0], ids, 2.0), atol=1e-5)


def test_grpo_loss_matches_a_direct_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]])
    # ratios e^.5 (clipped up), e^-1 (clipped down), 1, ...
    old = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -2.0, -1.0]])
    ref = torch.tensor([[-1.2, -2.0, -0.1], [-0.6, -1.0, -2.0]])
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    w = torch.tensor([[1.0, 0.5, 1.0], [2.0, 1.0, 0.25]])
    eps, beta = 0.2, 0.1
    loss, stats = grpo_loss(logp, old, ref, adv, mask, w, eps, beta)
    total, n, kls = 0.0, 0, []
    for b in range(2):
        for j in range(3):
            if not mask[b, j]:
                continue
            rho = math.exp(logp[b, j] - old[b, j])
            A = adv[b].item()
            sur = -min(rho * A, min(max(rho, 1 - eps), 1 + eps) * A) * w[b, j].item()
            d = (ref[b, j] - logp[b, j]).item()
            kl = math.exp(d) - d - 1
            total += sur + beta * kl
            kls.append(kl)
            n += 1
    assert abs(loss.item() - total / n) < 1e-5
    assert abs(stats["kl"] - sum(kls) / n) < 1e-5
    # clipped entries: rho = e^.5 (b0 j0), e^-1 (b0 j1), e^.5 (b1 j1), e^-1.5 (b1 j2); unclipped: b1 j0 (rho 1)
    assert abs(stats["clip_ratio"] - 4 / 5) < 1e-6
    assert torch.allclose(grpo_loss(logp, old, ref, adv, mask, w, eps, beta, pool="step")[0], loss)  # (B, N): one step
    # the unclipped branch carries gradient, the clipped-and-binding one does not
    lp = logp.clone().requires_grad_(True)
    grpo_loss(lp, old, ref, adv, mask, None, eps, 0.0)[0].backward()
    assert lp.grad[0, 0] == 0  # A > 0 and rho > 1 + eps: clipped, no gradient
    assert lp.grad[1, 0] != 0  # rho = 1: the surrogate's gradient is -A / n
    assert abs(lp.grad[1, 0].item() - (1.0 / 5)) < 1e-6
    assert lp.grad[0, 2] == 0  # masked out
    # shapes that broadcast but do not match are refused: (B, N) against (B, S, N) with B == S would
    # silently pair batch rows with steps
    with pytest.raises(ValueError, match="must share one shape"):
        grpo_loss(logp[:, None].expand(2, 2, 3), old[:, None].expand(2, 2, 3), ref[:, None].expand(2, 2, 3), adv, mask)
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(logp, old, ref, adv[:1], mask)


def test_object_advantages_and_per_token_advantages_by_hand():
    """Per-object credit: a blamed token gets at most -1, whatever its sample's advantage; grpo_loss takes the
    (B, N) advantages per token, over the steps of a (B, S, N) batch alike."""
    adv = torch.tensor([1.5, -2.0, 0.0])
    blamed = torch.tensor([[True, False], [True, False], [False, True]])
    A = grpo.object_advantages(adv, blamed)
    assert A.tolist() == [[-1.0, 1.5], [-2.0, -2.0], [0.0, -1.0]]
    assert grpo.object_advantages(adv, blamed, 0.0).tolist() == [[0.0, 1.5], [-2.0, -2.0], [0.0, 0.0]]  # not reinforced
    with pytest.raises(ValueError, match="blamed must be"):
        grpo.object_advantages(adv, blamed[:2])
    logp = torch.tensor([[-1.0, -2.0], [-0.3, -1.5], [-0.7, -0.2]])
    old = logp - torch.tensor([[0.1, -0.05], [0.02, 0.15], [-0.1, 0.08]])  # rho inside the clip range: -rho * A
    ref = logp + 0.05
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    loss, _ = grpo_loss(logp, old, ref, A, mask, beta=0.0)
    direct = -((logp - old).exp() * A * mask).sum() / mask.sum()
    assert abs(loss.item() - direct.item()) < 1e-6
    assert torch.allclose(grpo_loss(logp, old, ref, adv[:, None].expand(3, 2), mask)[0],
                          grpo_loss(logp, old, ref, adv, mask)[0])  # a constant row is the per-sample advantage
    steps = lambda x, d: torch.stack([x, x - d, x + d], 1)  # (B, 3 steps, N): the same ratios at every step
    loss3, _ = grpo_loss(steps(logp, 0.5), steps(old, 0.5), steps(ref, 0.5), A, torch.stack([mask] * 3, 1), beta=0.0)
    assert abs(loss3.item() - loss.item()) < 1e-6  # A[b, n] on token n of every step, not on step n
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(logp, old, ref, A[:, :1], mask)


def test_per_object_credit_pushes_blamed_tokens_down_where_rewards_are_flat():
    """Every sample scores alike (advantage 0), so per-sample GRPO has nothing to learn; blaming the positions
    that hold code 3 must still make code 3 rarer."""
    m, ref = tiny_model(), tiny_model().requires_grad_(False)
    ids = encode_prompts(["a red circle", "two blue squares"])
    flat_and_blame = lambda tok: (torch.zeros(tok.shape[0]), tok == 3)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    conf = grpo.GRPOConfig(group_size=8, beta=0.0)
    g = torch.Generator().manual_seed(0)
    kw = dict(steps=4, cfg_scale=0.0, mode="stochastic")
    share = lambda: (sample(m, ids.repeat_interleave(64, 0), generator=torch.Generator().manual_seed(1), **kw) == 3
                     ).float().mean().item()
    before = share()
    log = [grpo.rl_step(m, ref, opt, ids, flat_and_blame, kw, conf, generator=g) for _ in range(15)]
    assert before > 0.03 and share() < before / 2, (before, share())
    assert log[0]["frac_reward_zero_std"] == 1.0 and 0 < log[0]["blamed"] < 1


def tiny_model():
    torch.manual_seed(0)
    return MaskedTransformer(ModelConfig(codebook_size=16, n_tokens=16, d_model=32, n_layers=1, n_heads=2)).eval()


def test_replay_logp_equals_the_recorded_policy():
    m = tiny_model()
    ids = encode_prompts(["a red circle", "two blue squares"])
    _, tr = sample(m, ids, 4, cfg_scale=1.5, temperature=0.8, mode="stochastic",
                   generator=torch.Generator().manual_seed(0), record=True)
    with torch.no_grad():
        lp, mask = replay_logp(m, tr, [0, 2, 3])
    want = tr.logp[[0, 2, 3]].transpose(0, 1)
    assert mask.shape == lp.shape == (2, 3, 16)
    assert torch.equal(mask, tr.committed[[0, 2, 3]].transpose(0, 1))
    assert torch.allclose(lp[mask], want[mask], atol=1e-5)


def test_remask_masks_exactly_the_steps_count():
    m = tiny_model()
    ids = encode_prompts(["a red circle", "two blue squares", "a green circle"])
    _, tr = sample(m, ids, 5, generator=torch.Generator().manual_seed(0), record=True)
    steps = [0, 1, 4]
    masks = remask_masks(tr, steps, m.mask_id, torch.Generator().manual_seed(1))
    want = (tr.states[steps] == m.mask_id).sum(-1).T  # (B, S)
    assert torch.equal(masks.sum(-1), want)
    assert masks[:, 0].all()  # step 0 had everything masked
    with torch.no_grad():
        lp = remask_logp(m, tr.final, ids, masks, m.mask_id)
    assert lp.shape == (3, 3, 16) and (lp <= 0).all()


def test_ratio_masks_follow_maskgrpos_schedule():
    """r_j = min(m + (1 - m)(j + 1)/mu, 0.999): m=0.5, mu=1 -> 0.999; mu=4 -> 0.625, 0.75, 0.875, 0.999."""
    for mu, floor, want in [(1, 0.5, [0.999]), (4, 0.5, [0.625, 0.75, 0.875, 0.999]), (2, 0.6, [0.8, 0.999])]:
        m = ratio_masks(2000, 64, mu, torch.Generator().manual_seed(0), "cpu", floor)
        assert m.shape == (2000, mu, 64) and m.dtype == torch.bool
        rate = m.float().mean((0, 2))
        assert torch.allclose(rate, torch.tensor(want), atol=0.005), rate
    a = ratio_masks(3, 16, 2, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(a, ratio_masks(3, 16, 2, torch.Generator().manual_seed(1), "cpu"))


def test_maskgrpo_iteration_j_scores_mask_j(monkeypatch):
    """Old and reference log-probs are taken once on all mu masks; inner iteration j scores mask j only."""
    m = tiny_model()
    ref = tiny_model().requires_grad_(False)
    seen = []
    real = grpo.remask_logp
    spy = lambda model, f, p, masks, mid: seen.append(masks) or real(model, f, p, masks, mid)
    monkeypatch.setattr(grpo, "remask_logp", spy)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    s = grpo.rl_step(m, ref, opt, encode_prompts(["a red circle", "two blue squares"]),
                     lambda tok: (tok == 3).float().mean(1), dict(steps=4, cfg_scale=0.0),
                     grpo.GRPOConfig(group_size=4, estimator="maskgrpo", mu=3, mask_floor=0.0),
                     generator=torch.Generator().manual_seed(0))
    assert [tuple(x.shape) for x in seen] == [(8, 3, 16)] * 2 + [(8, 1, 16)] * 3
    assert seen[0][:, 0].float().mean() < 0.6 < seen[0][:, 2].float().mean()  # m=0: ratios 1/3, 2/3, 0.999
    for j in range(3):
        assert torch.equal(seen[2 + j][:, 0], seen[0][:, j])
    assert s["scored_steps"] == 3 and s["skipped"] == 0


def test_per_sample_steps_gather_each_samples_own_step():
    m = tiny_model()
    ids = encode_prompts(["a red circle", "two blue squares", "a green circle"])
    _, tr = sample(m, ids, 5, generator=torch.Generator().manual_seed(0), record=True)
    shared = [1, 3]
    per = torch.tensor([[1, 3], [1, 3], [1, 3]])  # the same steps as a (B, S) tensor: identical results
    a = remask_masks(tr, shared, m.mask_id, torch.Generator().manual_seed(1))
    assert torch.equal(a, remask_masks(tr, per, m.mask_id, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        assert torch.equal(replay_logp(m, tr, shared)[0], replay_logp(m, tr, per)[0])
        own = torch.tensor([[0, 4], [2, 3], [1, 2]])  # every sample its own steps
        lp, mask = replay_logp(m, tr, own)
        masks = remask_masks(tr, own, m.mask_id, torch.Generator().manual_seed(1))
        for b in range(3):
            for s in range(2):
                t = int(own[b, s])
                assert torch.equal(mask[b, s], tr.committed[t, b])
                assert torch.allclose(lp[b, s][mask[b, s]], tr.logp[t, b][mask[b, s]], atol=1e-5)
                assert masks[b, s].sum() == (tr.states[t, b] == m.mask_id).sum()


def test_a_tiny_rl_run_raises_the_reward():
    """Easy task: reward = fraction of tokens equal to code 3. GRPO must push the policy towards it."""
    from grpo import GRPOConfig, rl_step
    m = tiny_model()
    ref = tiny_model().requires_grad_(False)
    ids = encode_prompts(["a red circle", "two blue squares"])
    score = lambda tok: (tok == 3).float().mean(1)
    g = torch.Generator().manual_seed(0)
    kw = dict(steps=4, cfg_scale=0.0, mode="stochastic")
    for estimator in ("remask", "replay", "maskgrpo"):
        m.load_state_dict(ref.state_dict())
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
        conf = GRPOConfig(group_size=8, estimator=estimator, beta=0.0)
        log = [rl_step(m, ref, opt, ids, score, kw, conf, generator=g) for _ in range(25)]
        first = sum(x["reward"] for x in log[:5]) / 5
        last = sum(x["reward"] for x in log[-5:]) / 5
        assert last > first + 0.2, (estimator, first, last)
        assert all(x["skipped"] == 0 for x in log)


def test_a_non_finite_loss_is_skipped_and_never_reaches_the_weights():
    """NaN rewards make NaN advantages and a NaN loss: every inner update is skipped, counted, and the
    weights stay exactly as they were (without the check, the NaN gradient would overwrite them)."""
    m = tiny_model()
    ref = tiny_model().requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    nan = lambda tok: torch.full((tok.shape[0],), float("nan"))
    s = grpo.rl_step(m, ref, opt, encode_prompts(["a red circle", "two blue squares"]), nan,
                     dict(steps=4, cfg_scale=0.0), grpo.GRPOConfig(group_size=4, mu=3),
                     generator=torch.Generator().manual_seed(0))
    assert s["skipped"] == 3 and math.isnan(s["kl"]) and math.isnan(s["grad_norm"])  # not a number, not missing
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("max_norm", [1e9, 1e-4])
def test_the_logged_grad_norm_is_the_gradients_before_clipping(max_norm):
    """grad_norm is the gradient's global norm before clip_grad_norm_: with no clipping, the norm of the gradient
    left on the weights; clipped to 1e-4, those gradients have norm 1e-4 and the logged one is larger."""
    m, ref = tiny_model(), tiny_model().requires_grad_(False)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    s = grpo.rl_step(m, ref, opt, encode_prompts(["a red circle", "two blue squares"]),
                     lambda tok: (tok == 3).float().mean(1), dict(steps=4, cfg_scale=2.0),
                     grpo.GRPOConfig(group_size=4, estimator="replay", max_grad_norm=max_norm), score_steps="all",
                     generator=torch.Generator().manual_seed(0))
    left = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).norm().item()
    if max_norm > 1:
        assert s["grad_norm"] == pytest.approx(left, rel=1e-5) and left > 0
    else:
        assert left == pytest.approx(1e-4, rel=1e-3) and s["grad_norm"] > 1e-3


@pytest.mark.parametrize("estimator,pool", [("remask", "step"), ("replay", "token"), ("maskgrpo", "token")])
def test_micro_batches_give_the_same_update_as_one_batch(estimator, pool):
    """Gradient accumulation over micro-batches of 3 rollouts (8 = 3 + 3 + 2, uneven on purpose) leaves the same
    weights and the same logged numbers as scoring all 8 at once: the pooling's weights come from the whole batch.
    replay and maskgrpo with per-object credit: (B, N) advantages split by rows too."""
    reward = lambda tok: (tok == 3).float().mean(1)
    score = reward if estimator == "remask" else lambda tok: (reward(tok), tok == 5)
    results = []
    for micro in (0, 3):
        m, ref = tiny_model(), tiny_model().requires_grad_(False)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)  # plain SGD: Adam would blow up float noise in tiny gradients
        conf = grpo.GRPOConfig(group_size=4, estimator=estimator, mu=2, pool=pool, micro_batch=micro)
        s = grpo.rl_step(m, ref, opt, encode_prompts(["a red circle", "two blue squares"]),
                         score, dict(steps=4, cfg_scale=2.0), conf, score_steps=2,
                         generator=torch.Generator().manual_seed(0))
        results.append((m.state_dict(), s))
    (w0, s0), (w1, s1) = results
    assert any((w0[k] != tiny_model().state_dict()[k]).any() for k in w0)  # the update did move the weights
    for k in w0:
        assert torch.allclose(w0[k], w1[k], atol=1e-5), (k, (w0[k] - w1[k]).abs().max())
    for k in ("kl", "clip_ratio", "ratio", "reward", "grad_norm"):
        assert abs(s0[k] - s1[k]) < 1e-5, (k, s0[k], s1[k])


@pytest.mark.parametrize("pool", ["token", "step"])
def test_pool_weights_over_ranks_are_the_global_batchs(pool):
    """Data parallel: each rank pools its rows with the counts summed over the ranks (`total`), so the ranks'
    weights side by side are the one-process weights of the whole batch, whatever each rank's own counts."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 3, 10, generator=g) < torch.tensor([0.2, 0.5, 0.9])[:, None]  # (B, S, N), steps differ
    mask[4:, 0], mask[5] = False, False  # rank 1 (rows 3-5) scores fewer tokens, none at rows 4-5 step 0
    halves = (mask[:3], mask[3:])
    def total(n):  # what dist.total returns on each rank: the count summed over both halves
        return sum(h.float().sum() if n.ndim == 0 else h.float().sum((0, 2), keepdim=True) for h in halves)

    got = torch.cat([grpo.pool_weights(h, pool, total) for h in halves])
    assert torch.allclose(got, grpo.pool_weights(mask, pool))
    own = torch.cat([grpo.pool_weights(h, pool) for h in halves]) / 2  # each rank pooling only its rows
    assert not torch.allclose(own, grpo.pool_weights(mask, pool))
