import dataclasses
import itertools

import pytest
import torch

import bench
import config
import shortcut as sc
import train
from model import MaskedTransformer, ModelConfig, encode_prompts, null_prompts
from report import speed_table_lines
from bench import cost
from sample import sample

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a yellow circle"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return MaskedTransformer(ModelConfig(codebook_size=16, n_tokens=16, d_model=32, n_layers=2, n_heads=2)).eval()


def test_budget_steps_small_cases():
    assert sc.budget_steps(15, 7) == [0, 2, 4, 6, 9, 11, 13]
    assert sc.budget_steps(12, 1) == [0]
    assert sc.budget_steps(12, 12) == list(range(12))
    assert sc.budget_steps(12, 4) == [0, 3, 6, 9]
    assert sc.budget_steps(32, 8) == [0, 4, 8, 12, 16, 20, 24, 28]
    for bad in (0, 13):
        with pytest.raises(ValueError):
            sc.budget_steps(12, bad)


def test_shortcut_shapes_and_zero_delta():
    net = sc.Shortcut(32)
    prev, emb = torch.randn(3, 16, 32), torch.randn(3, 16, 32)
    new = torch.zeros(3, 16, dtype=torch.bool)
    new[0, 2] = True  # row 1 and 2 commit nothing: only the null key is attended to
    out = net(prev, emb, new, torch.tensor([0.9, 0.5, 0.1]))
    assert out.shape == (3, 16, 32) and torch.equal(out, prev)  # delta starts at exactly zero
    assert sc.ratio_embedding(torch.tensor([0.0, 1.0]), 8).shape == (2, 8)


def test_shortcut_sampling_never_reads_values_back():
    from test_sample import HostReads
    model, net = tiny_model(), sc.Shortcut(32)
    for uncond in ("shortcut", "cache"):
        with HostReads() as spy:
            sc.sample_with_shortcut(model, net, encode_prompts(PROMPTS), 8, [0, 3, 5], cfg_scale=2.0, uncond=uncond,
                                    generator=torch.Generator().manual_seed(0))
        assert spy.seen == []


def test_full_budget_is_vanilla_sampling_and_zero_delta_is_the_cache():
    model = tiny_model()
    ids = encode_prompts(PROMPTS)
    kw = dict(cfg_scale=2.0, temperature=0.9, choice_temperature=4.5)
    for mode in ("confidence", "stochastic"):
        want = sample(model, ids, 6, mode=mode, generator=torch.Generator().manual_seed(3), **kw)
        got = sc.sample_with_shortcut(model, sc.Shortcut(32), ids, 6, 6, mode=mode,
                                      generator=torch.Generator().manual_seed(3), **kw)
        assert torch.equal(want, got)
    a = sc.sample_with_shortcut(model, sc.Shortcut(32), ids, 6, 2, generator=torch.Generator().manual_seed(4), **kw)
    b = sc.sample_with_shortcut(model, None, ids, 6, 2, generator=torch.Generator().manual_seed(4), cache=True, **kw)
    assert torch.equal(a, b) and (a < 16).all()


def test_a_few_training_steps_lower_the_feature_mse():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    ids = encode_prompts([PROMPTS[i % 3] for i in range(48)])
    data = sc.collect(model, ids, 6, 2.0, 1.0, 4.5, g, batch=16)
    assert data["feats"].shape == (6, 96, 16, 32) and data["states"].shape == (6, 96, 16)
    tr, val = sc.split_rows(data, 0.25)
    assert len(val) == 24 and not set(data["traj"][tr].tolist()) & set(data["traj"][val].tolist())
    net = sc.Shortcut(32)
    log = sc.train_shortcut(net, model, data, iters=60, batch=32, lr=3e-3, generator=g)
    assert abs(log[0]["val"] - log[0]["val_cache"]) < 0.5 * log[0]["val_cache"]  # starts near the cache
    assert log[-1]["val"] < 0.8 * log[-1]["val_cache"]
    rows = val
    dist = bench.step_distance_mse(net, model, data, rows, max_d=2)
    assert set(dist) == {1, 2} and all(s > 0 and c > 0 for s, c in dist.values())
    # the base model was an input, not a learner: no gradients, and left as it came (not frozen)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_weights_are_cast_to_bf16_once_per_sampling_call_not_per_step(monkeypatch):
    """The CUDA path (bf16 autocast) simulated on the CPU. Both samplers run their loop in one autocast region,
    so autocast's cache casts a weight that requires grad once per call; on a GPU, where this small model waits on
    kernel launches, per-step casts were a third of a step's launches (README, the GPU preset)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    import sample as sample_module
    bf16 = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    monkeypatch.setattr(sample_module, "autocast", bf16)
    monkeypatch.setattr(sc, "autocast", bf16)
    model, net, ids = tiny_model(), sc.Shortcut(32), encode_prompts(PROMPTS)
    weights = {p.data_ptr() for p in [*model.parameters(), *net.parameters()]}

    class WeightCasts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func is torch.ops.aten._to_copy.default and args[0].data_ptr() in weights
            return func(*args, **(kwargs or {}))

    def run(steps, kind):  # -> (tokens, weight casts); the shortcut: base calls at step 0 and halfway
        with WeightCasts() as casts:
            g = torch.Generator().manual_seed(0)
            out = (sample(model, ids, steps, 2.0, generator=g) if kind == "vanilla" else
                   sc.sample_with_shortcut(model, net, ids, steps, 2, 2.0, 1.0, 4.5, generator=g))
        return out, casts.n

    for kind in ("vanilla", "shortcut"):
        (short, few), (long, same) = run(3, kind), run(6, kind)
        assert 0 < few == same, kind
        model.requires_grad_(False)  # frozen weights are not cached: every step casts again...
        (short_f, few_f), (long_f, more) = run(3, kind), run(6, kind)
        model.requires_grad_(True)
        assert more > few_f >= few, kind
        assert torch.equal(short, short_f) and torch.equal(long, long_f), kind  # ...to the same values


def test_chained_loss_by_hand_and_unrolled_training():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    data = sc.collect(model, encode_prompts([PROMPTS[i % 3] for i in range(32)]), 6, 0.0, 1.0, 4.5, g, batch=16)
    rows = torch.arange(8)
    net = sc.Shortcut(32)
    loss = sc.chain_loss(net, model, data, 1, 3, rows)
    cache = sum(sc.masked_mse(data["feats"][1, rows].float(), data, s, rows, model.mask_id) for s in (2, 3, 4)) / 3
    assert torch.allclose(loss, cache)  # zero delta: every chained step is the cache
    # by hand: the mean over steps 2..4 of the MSE to those steps' features on their masked positions
    want = 0.0
    for s in (2, 3, 4):
        m = (data["states"][s, rows] == model.mask_id).float()
        err = ((data["feats"][1, rows].float() - data["feats"][s, rows].float()) ** 2).sum(-1)
        want += (err * m).sum() / (m.sum() * 32) / 3
    assert torch.allclose(cache, want, rtol=1e-5)
    with torch.no_grad():
        net.out.bias.fill_(0.1)  # a non-zero delta: the chain feeds each prediction into the next step
    steps = list(sc.chain(net, model, data, 1, 3, rows))
    assert [s for s, _ in steps] == [2, 3, 4]
    assert torch.allclose(steps[-1][1], data["feats"][1, rows].float() + 0.3, atol=1e-5)
    net = sc.Shortcut(32)
    sc.train_shortcut(net, model, data, iters=60, batch=32, lr=3e-3, val_frac=0.25, generator=g, unroll=3)
    d3_sc, d3_cache = bench.step_distance_mse(net, model, data, rows, max_d=3)[3]  # rows 0-7: held out
    assert d3_sc < 0.8 * d3_cache


def test_uncond_cache_moves_only_the_conditional_branch():
    model, net = tiny_model(), sc.Shortcut(32)
    with torch.no_grad():
        net.out.bias.fill_(0.1)  # a non-zero delta, so a moved branch differs from the cached one
    ids = encode_prompts(PROMPTS)
    kw = dict(cfg_scale=2.0, temperature=0.9, choice_temperature=4.5, record=True)
    _, rec = sc.sample_with_shortcut(model, net, ids, 6, 2, generator=torch.Generator().manual_seed(5),
                                     uncond="cache", **kw)
    f = rec["feats"]  # (T, 2B, N, D); base calls at steps 0 and 3
    assert torch.equal(f[1:3, 3:], f[0:1, 3:].expand(2, -1, -1, -1))  # the null-prompt rows stay put
    assert torch.allclose(f[2, :3], f[0, :3] + 0.2, atol=1e-5)  # the conditional rows take two shortcut steps
    assert torch.equal(f[4:, 3:], f[3:4, 3:].expand(2, -1, -1, -1))
    _, rec = sc.sample_with_shortcut(model, net, ids, 6, 2, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.allclose(rec["feats"][2, 3:], rec["feats"][0, 3:] + 0.2, atol=1e-5)  # the paper's way: both move
    with pytest.raises(ValueError):
        sc.sample_with_shortcut(model, net, ids, 6, 2, uncond="skip")


def test_budget_as_a_list_of_steps():
    model, net = tiny_model(), sc.Shortcut(32)
    with torch.no_grad():
        net.out.bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))  # a large delta
    ids = encode_prompts(PROMPTS)
    run = lambda budget: sc.sample_with_shortcut(model, net, ids, 6, budget, cfg_scale=2.0,
                                                 generator=torch.Generator().manual_seed(7))
    assert torch.equal(run([0, 3]), run(2)) and torch.equal(run(list(range(6))), run(6))
    assert not torch.equal(run([0, 1]), run([0, 3]))  # where the calls are changes the samples
    for bad in ([1, 3], [0, 6]):
        with pytest.raises(ValueError):
            run(bad)


def fake_clock(monkeypatch, seconds):
    """bench.timed runs the call and says it took seconds[k] for the k-th row of each batch; -> the batch sizes."""
    sizes, calls = [], itertools.count()

    def timed(fn, device):
        out = fn()
        sizes.append(out.shape[0])
        return out, seconds[next(calls) % len(seconds)]
    monkeypatch.setattr(bench, "timed", timed)
    return sizes


def test_speed_table_rows_and_listed_calls(monkeypatch):
    model, net = tiny_model(), sc.Shortcut(32)
    ids = encode_prompts((PROMPTS * 4)[:10])  # 10 prompts in batches of 4, 4, 2: the second one is timed
    sizes = fake_clock(monkeypatch, [0.4, 0.1, 0.2, 0.2])
    seen = []
    score = lambda tokens: seen.append(tokens) or dict(accuracy=0.5, quality=float(tokens.shape[0]))
    configs = [("vanilla", 6, 6), ("vanilla", 2, 2), ("shortcut", 6, [0, 3]), ("cache", 6, [0, 1])]
    rows = bench.speed_table(model, net, configs, ids, score, 6, 4, dict(cfg_scale=2.0), seed=3)
    assert sizes == [4] * 8 + [2] * 4  # every row takes each batch in turn
    assert [(r["kind"], r["steps"], r["budget"]) for r in rows] == [("vanilla", 6, 6), ("vanilla", 2, 2),
                                                                   ("shortcut", 6, 2), ("cache", 6, 2)]
    assert "calls" not in rows[2] and rows[3]["calls"] == [0, 1]  # only calls that are not evenly spaced are listed
    assert [r["speedup"] for r in rows] == [1.0, 4.0, 2.0, 2.0] and rows[0]["ms_per_image"] == 100.0
    assert all(r["quality"] == 10 and r["accuracy"] == 0.5 for r in rows)  # every prompt scored, once
    g = torch.Generator().manual_seed(3)  # one generator per row, across the batches
    want = torch.cat([sc.sample_with_shortcut(model, net, ids[i:i + 4], 6, [0, 3], cfg_scale=2.0, generator=g)
                      for i in (0, 4, 8)])
    assert torch.equal(seen[2], want)
    vanilla_ops = cost(lambda: sample(model, ids[:1], 6, cfg_scale=2.0))[1]
    assert rows[0]["ops"] == vanilla_ops and rows[1]["ops"] < vanilla_ops / 2  # the same sampler; 2 steps of 6
    net_ops = cost(lambda: net(torch.zeros(1, 16, 32), torch.zeros(1, 16, 32), torch.ones(1, 16).bool(),
                                  torch.ones(1)))[1]
    # 4 steps take the shortcut: its net and its inputs, where the cache has none
    extra = rows[2]["ops"] - rows[3]["ops"]
    assert extra % 4 == 0 and net_ops < extra / 4 < net_ops + 12
    lines = speed_table_lines(rows)
    assert len(lines) == 6 and "| cache | 6 | 2 at 0,1 |" in lines[5] and "| 4.00x |" in lines[3]
    assert f"| 1.00x | {vanilla_ops} | 50.0% |" in lines[2]
    del rows[0]["ops"]  # a table made before the ops column still renders, without it
    assert "| ops |" not in speed_table_lines(rows[:1])[0]


def test_step_cost_counts_each_networks_own_ops():
    model, net = tiny_model(), sc.Shortcut(32)
    (base_flops, base_ops), (sc_flops, sc_ops) = bench.step_cost(model, net, 1)
    x, p = torch.full((2, 16), model.mask_id), null_prompts(2)  # both CFG branches of an empty board
    assert base_ops == cost(lambda: model(x, p))[1]
    f, none, ratio = torch.zeros(1, 16, 32), torch.zeros(1, 16, dtype=torch.bool), torch.ones(1)
    assert sc_ops == cost(lambda: net(f, f, none, ratio))[1]  # making the inputs is not the net's cost
    two = bench.step_cost(model, net, 2)[1]  # the shortcut on both branches: twice the FLOPs, the same ops
    assert two == (2 * sc_flops, sc_ops) and sc_flops < base_flops / 2


def test_speed_table_with_one_batch_times_it_again(monkeypatch):
    model, net = tiny_model(), sc.Shortcut(32)
    ids = encode_prompts(PROMPTS)  # 3 prompts, batches of 8: one batch, the warm-up, then sampled again and timed
    sizes = fake_clock(monkeypatch, [0.3])
    rows = bench.speed_table(model, net, [("vanilla", 4, 4)], ids, lambda t: dict(accuracy=1.0, quality=0.0), 4, 8, {})
    assert sizes == [3, 3] and rows[0]["ms_per_image"] == 100.0


def test_the_shortcut_table_at_the_papers_setting():
    # MIGM-Shortcut's MaskGIT runs: 32 steps, 12 base calls, spread evenly
    assert sc.budget_steps(32, 12) == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29]
    rows = train.shortcut_configs(config.Config())
    assert rows[:3] == [("vanilla", 32, 32), ("vanilla", 10, 10), ("vanilla", 12, 12)]
    assert rows[3:7] == [(kind, 32, b) for kind in ("cache", "shortcut") for b in (10, 12)]
    assert rows[7:] == [("vanilla", 6, 6), ("shortcut", 12, 6)]  # vanilla 12 is there already: once
    rows = train.shortcut_configs(dataclasses.replace(config.Config(), sc_budgets="8,12"))
    assert rows[:3] == [("vanilla", 32, 32), ("vanilla", 8, 8), ("vanilla", 12, 12)] and len(rows) == 9
