"""
What measures the samplers: FLOP and op counts, latency, and the shortcut's speed and quality table.
Not a concept of the papers, so kept out of sample.py and shortcut.py.

  cost              (FLOPs, aten ops) of one call: ops are about one GPU kernel launch each, and a small
                    model on a GPU waits on launches, not FLOPs (the shortcut saves FLOPs, not ops)
  time_interleaved  median latency of several functions, timed in turn round by round (CUDA events on a GPU)
  sampler_speed     images/s of sample.sample at a batch (python sample.py --bench)
  step_distance_mse held-out feature error of chained shortcut steps vs the cache, d steps ahead
  step_cost         (FLOPs, ops) of one base-model step and one shortcut step
  speed_table       vanilla / cache / shortcut rows: latency, speed-up, ops, and the caller's accuracy and quality
"""

import statistics
import time

import torch
from tqdm import tqdm

from model import autocast, null_prompts
from sample import sample
from shortcut import budget_steps, call_steps, chain, masked_sq, sample_with_shortcut


def cost(fn):
    """(FLOPs, ops) of one call of fn(): torch's FLOP counter (matmuls and attention), and the aten ops that do
    work (views excluded), about one GPU kernel launch each. A small model on a GPU waits on Python to launch
    its kernels, so there a step costs per op, not per FLOP (README: the shortcut saves FLOPs, not ops).
    sample.py --bench prints a sampling call's ops; speed_table counts them per row."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += not func.is_view
            return func(*args, **(kwargs or {}))

    with FlopCounterMode(display=False) as fc, Ops() as ops:
        fn()
    return fc.get_total_flops(), ops.n


def time_interleaved(fns, device, rounds=5):
    """Median seconds per call of each fn() in fns: one warm-up call each, then `rounds` rounds that call
    every fn once in turn (so a slow spell of the machine hits every row alike; the median drops spikes).
    CUDA events on a GPU, the wall clock elsewhere. speed_table times its rows with it, and
    sample.py --bench one sampling call."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in tqdm(range(rounds), desc="timing", leave=False):
        for fn, ts in zip(fns, times):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                ts.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def sampler_speed(model, ids, steps, cfg_scale, device, **kw):
    """sample.py --bench: (images/s, ms per image, aten ops per sampling call) of `sample` on the batch ids,
    median of 3 interleaved rounds after a warm-up; the ops of one call at batch 1 (the same at any batch)."""
    kw = dict(kw, generator=None)
    sec = time_interleaved([lambda: sample(model, ids, steps, cfg_scale, **kw)], device, rounds=3)[0]
    ops = cost(lambda: sample(model, ids[:1], steps, cfg_scale, **kw))[1]
    return len(ids) / sec, 1000 * sec / len(ids), ops


@torch.no_grad()
def step_distance_mse(shortcut, model, data, rows, max_d=4):
    """Held-out MSE (on positions masked at the target step) of features d steps ahead, from true base
    features at step t: chained shortcut steps (fed the true committed tokens) vs the cache. -> {d: (sc, cache)}.
    Pooled over every start step t: each masked entry counts once (train_shortcut's log averages per step)."""
    T = data["feats"].shape[0]
    out = {}
    for d in range(1, max_d + 1):
        sc = cache = n = 0.0
        for t in range(T - d):
            *_, (s, pred) = chain(shortcut, model, data, t, d, rows)
            sq, count = masked_sq(pred, data, s, rows, model.mask_id)
            sc, n = sc + sq.item(), n + count.item()
            cache += masked_sq(data["feats"][t, rows].float(), data, s, rows, model.mask_id)[0].item()
        out[d] = (sc / max(n, 1), cache / max(n, 1))
    return out


@torch.no_grad()
def step_cost(model, net, branches):
    """[(FLOPs, ops) of a base-model step, of a shortcut step] for one image, the base model on both CFG branches
    and the shortcut on the `branches` it moves; run as the sampling loop runs a step (autocast, warmed up)."""
    dev, N = next(model.parameters()).device, model.cfg.n_tokens
    x, p = torch.full((2, N), model.mask_id, device=dev), null_prompts(2, dev)  # an empty board, both branches
    f = torch.zeros(branches, N, model.cfg.d_model, device=dev)  # features in, as the shortcut sees them
    none, ratio = torch.zeros(branches, N, dtype=torch.bool, device=dev), torch.ones(branches, device=dev)
    with autocast(dev):  # the inputs are made above, so each count is the network's own ops
        fns = [lambda: model(x, p), lambda: net(f, f, none, ratio)]
        for fn in fns:
            fn()  # warm-up: on CUDA it fills autocast's cache of bf16 weights, as a loop's first step does
        return [cost(fn) for fn in fns]


def speed_table(model, shortcut, configs, prompt_ids, score, ref_steps, bench_batch, sample_kwargs, seed=0):
    """configs: list of (kind, steps, budget), kind in vanilla|cache|shortcut, budget a number of base calls or
    a list of the steps that make them (the row then has budget = its length and calls). score(tokens) -> a dict of
    metrics (train.py: accuracy, per category, quality) that joins the row. Latency per image at batch
    bench_batch (time_interleaved; prompt_ids repeated when there are fewer), and each row's aten ops (cost);
    the metrics on all of prompt_ids. -> rows."""
    dev = prompt_ids.device
    runs = [lambda ids, g, kind=kind, steps=steps, budget=budget: sample_with_shortcut(
        model, shortcut, ids, steps, budget, generator=g, cache=kind == "cache", **sample_kwargs)
        for kind, steps, budget in configs]
    bench_ids = prompt_ids.repeat(-(-bench_batch // len(prompt_ids)), 1)[:bench_batch]  # (bench_batch, L)
    secs = time_interleaved([lambda run=run: run(bench_ids, torch.Generator(dev).manual_seed(seed)) for run in runs],
                            dev, rounds=3)
    rows = []
    for (kind, steps, budget), run, sec in tqdm(list(zip(configs, runs, secs)), desc="speed table", leave=False):
        g = torch.Generator(dev).manual_seed(seed)
        tokens = torch.cat([run(prompt_ids[i:i + bench_batch], g) for i in range(0, len(prompt_ids), bench_batch)])
        calls = call_steps(steps, budget)
        listed = dict(calls=calls) if calls != budget_steps(steps, len(calls)) else {}  # only where not even
        ops = cost(lambda: run(prompt_ids[:1], torch.Generator(dev).manual_seed(seed)))[1]  # any batch: the same
        rows.append(dict(kind=kind, steps=steps, budget=len(calls), **listed, ops=ops,
                         ms_per_image=1000 * sec / len(bench_ids), **score(tokens)))
    ref = next(r["ms_per_image"] for r in rows if r["kind"] == "vanilla" and r["steps"] == ref_steps)
    for r in rows:
        r["speedup"] = ref / r["ms_per_image"]
    return rows
