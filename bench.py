"""
What measures the samplers: FLOP and op counts, latency, and the shortcut's speed and quality table.
Not a concept of the papers, so kept out of sample.py and shortcut.py.

  forward_flops     model FLOPs of one forward pass of one sequence, counted as MFU counts them (training: 3x)
  cost              (FLOPs, aten ops) of one call: ops are about one GPU kernel launch each, and a small
                    model on a GPU waits on launches, not FLOPs (the shortcut saves FLOPs, not ops)
  timed             (result, seconds) of one call (CUDA events on a GPU)
  time_interleaved  median latency of several functions, timed in turn round by round (CUDA events on a GPU)
  pretrain_speed    seconds per pretraining step on fixed random tokens (the model's pace, no scene rendering)
  compiled_check    the compiled sampling trunk against eager: new shapes, weights changed in place, a second model
  sampler_speed     images/s of sample.sample at a batch (python sample.py --bench)
  step_distance_mse held-out feature error of chained shortcut steps vs the cache, d steps ahead
  step_cost         (FLOPs, ops) of one base-model step and one shortcut step
  speed_table       vanilla / cache / shortcut rows: latency, speed-up, ops, and the caller's accuracy and quality

python bench.py --preset gpu: pretraining MFU and sampler images/s, eager and compiled, against PEAK_FLOPS.
"""

import copy
import statistics
import time

import torch
from tqdm import tqdm

from model import autocast, maskgit_masks, null_prompts
from sample import compiled_features, sample
from shortcut import budget_steps, call_steps, chain, masked_sq, sample_with_shortcut


PEAK_FLOPS = 790e12  # MFU's divisor: an H200's bf16 matmul rate as large products reach it (datasheet: about 989)


def forward_flops(config):
    """Model FLOPs of one forward pass of one sequence (ModelConfig config: L prompt words + N image tokens, S = L + N),
    2 per multiply-add: per layer the matmul weights (q, k, v, out: 4 d^2; the MLP: 2 mlp_ratio d^2) on all S
    positions and attention's two S x S products (4 S^2 d), then the head (d x K) on the N image positions.
    Embeddings, norms, softmax and RoPE are left out, as MFU counts; a training step counts 3x (backward 2x)."""
    d, N = config.d_model, config.n_tokens
    S = config.prompt_len + N
    layer = 2 * (4 + 2 * config.mlp_ratio) * d * d * S + 4 * S * S * d
    return config.n_layers * layer + 2 * d * config.codebook_size * N


def cost(fn):
    """(FLOPs, ops) of one call of fn(): torch's FLOP counter (matmuls and attention), and the aten ops that do
    work (views excluded), about one GPU kernel launch each. A small model on a GPU waits on Python to launch
    its kernels, so there a step costs per op, not per FLOP (docs/board-world.md, section 8: the shortcut saves
    FLOPs, not ops). sample.py --bench prints a sampling call's ops; speed_table counts them per row."""
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


def timed(fn, device):
    """(fn()'s result, its seconds): CUDA events on a GPU (after the queued work is done), the wall clock elsewhere."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        return fn(), time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize()
    return out, start.elapsed_time(end) / 1000


def time_interleaved(fns, device, rounds=5):
    """Median seconds per call of each fn() in fns: one warm-up call each, then `rounds` rounds that call
    every fn once in turn (so a slow spell of the machine hits every row alike; the median drops spikes).
    sample.py --bench times one sampling call with it, and shortcut.py's demo its samplers."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in tqdm(range(rounds), desc="timing", leave=False):
        for fn, ts in zip(fns, times):
            ts.append(timed(fn, device)[1])
    return [statistics.median(ts) for ts in times]


def pretrain_speed(cfg, model, pretrain_step, steps=10, rounds=3):
    """Median seconds per pretrain_step (train.py's, which imports this file: the caller hands it in) at
    cfg.batch_size (torch.compile'd when cfg.compile), `steps` steps per timed round after a warm-up round, on
    fixed random tokens with fresh masks: the model's own pace, without the scene rendering and VQ encoding that
    train.py's stage adds. It trains `model` (use a throwaway)."""
    dev, B, N = next(model.parameters()).device, cfg.batch_size, model.config.n_tokens
    g = torch.Generator(dev).manual_seed(0)
    tokens, ids = torch.randint(0, model.config.codebook_size, (B, N), generator=g, device=dev), null_prompts(B, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    net = torch.compile(model.train()) if cfg.compile else model.train()

    def run():
        for step in range(steps):
            pretrain_step(cfg, net, opt, tokens, ids, maskgit_masks(B, N, g, dev, cfg.prompt_drop), step)
    return time_interleaved([run], dev, rounds)[0] / steps


def eager(model):
    """The same model (the same weights) with its sampling calls not compiled: what op counts run on."""
    plain = copy.copy(model)
    plain.compile_sampling = False
    return plain


@torch.no_grad()
def compiled_check(model, batch=64):
    """Relative error of sample.compiled_features against model.features on random boards (under autocast, as the
    samplers call them): at the first three calls (on CUDA: warm-up, CUDA-graph recording, replay), at a second
    batch size, after a change of the weights in place (what AdamW does between RL rollouts: a replay must read
    the new weights), on a changed copy (two models, one compiled function) and on the first again. -> {case: error}:
    each should be rounding (float32 about 1e-6, bf16 about 1e-2); a stale weight or output gives far more.
    Works on a copy of model."""
    model, dev = copy.deepcopy(model).eval(), next(model.parameters()).device
    g = torch.Generator(dev).manual_seed(0)

    def err(m, B):
        x = torch.randint(0, m.config.codebook_size + 1, (B, m.config.n_tokens), generator=g, device=dev)
        with autocast(dev):
            c, e = compiled_features(m, x, null_prompts(B, dev)).float(), m.features(x, null_prompts(B, dev)).float()
        return ((c - e).norm() / e.norm()).item()
    out = {f"call {i + 1}": err(model, batch) for i in range(3)}
    out["another batch size"] = err(model, batch + batch // 2)
    for q in model.parameters():
        q.add_(0.05 * torch.randn(q.shape, generator=g, device=dev))
    out["after an in-place update"] = err(model, batch)
    twin = copy.deepcopy(model)
    for q in twin.parameters():
        q.mul_(1.5)
    out["a second model"], out["the first again"] = err(twin, batch), err(model, batch)
    return out


def sampler_speed(model, ids, steps, cfg_scale, device, **kw):
    """sample.py --bench: (images/s, ms per image, aten ops per sampling call) of `sample` on the batch ids,
    median of 3 interleaved rounds after a warm-up (compiled too when model.compile_sampling is set); the ops of
    one eager call at batch 1 (the same at any batch)."""
    kw = dict(kw, generator=None)
    sec = time_interleaved([lambda: sample(model, ids, steps, cfg_scale, **kw)], device, rounds=3)[0]
    ops = cost(lambda: sample(eager(model), ids[:1], steps, cfg_scale, **kw))[1]
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
    dev, N = next(model.parameters()).device, model.config.n_tokens
    x, p = torch.full((2, N), model.mask_id, device=dev), null_prompts(2, dev)  # an empty board, both branches
    f = torch.zeros(branches, N, model.config.d_model, device=dev)  # features in, as the shortcut sees them
    none, ratio = torch.zeros(branches, N, dtype=torch.bool, device=dev), torch.ones(branches, device=dev)
    with autocast(dev):  # the inputs are made above, so each count is the network's own ops
        fns = [lambda: model(x, p), lambda: net(f, f, none, ratio)]
        for fn in fns:
            fn()  # warm-up: on CUDA it fills autocast's cache of bf16 weights, as a loop's first step does
        return [cost(fn) for fn in fns]


def speed_table(model, shortcut, configs, prompt_ids, score, ref_steps, batch, sample_kwargs, seed=0):
    """configs: list of (kind, steps, budget), kind in vanilla|cache|shortcut, budget a number of base calls or
    a list of the steps that make them (the row then has budget = its length and calls). score(tokens) -> a dict of
    metrics (train.py: accuracy, per category, quality) that joins the row. Every row samples all of prompt_ids
    in batches of `batch`, each row with its own generator seeded `seed`; the rows take each batch in turn, so a
    slow spell of the machine hits every row alike, and the latency per image is timed on the full batches after
    the first (a warm-up; with one batch only, it is sampled again to be timed). Each row's aten ops (cost) too.
    The speed-up is against vanilla sampling with ref_steps steps. -> rows."""
    dev = prompt_ids.device
    runs = [lambda ids, g, kind=kind, steps=steps, budget=budget, model=model: sample_with_shortcut(
        model, shortcut, ids, steps, budget, generator=g, cache=kind == "cache", **sample_kwargs)
        for kind, steps, budget in configs]
    gens = [torch.Generator(dev).manual_seed(seed) for _ in configs]
    starts = range(0, len(prompt_ids), batch)
    timed_at = [i for i in starts[1:] if i + batch <= len(prompt_ids)]  # full batches after the warm-up one
    tokens, secs = [[] for _ in configs], [0.0 for _ in configs]
    for i in tqdm(starts, desc="speed table", leave=False):
        for j, run in enumerate(runs):
            out, sec = timed(lambda: run(prompt_ids[i:i + batch], gens[j]), dev)
            tokens[j].append(out)
            secs[j] += sec if i in timed_at else 0.0
    n_timed = batch * len(timed_at)
    if not timed_at:  # one batch: it was the warm-up; time it again
        n_timed = min(batch, len(prompt_ids))
        secs = [timed(lambda: run(prompt_ids[:batch], torch.Generator(dev).manual_seed(seed)), dev)[1] for run in runs]
    rows = []
    for (kind, steps, budget), run, sec, toks in zip(configs, runs, secs, tokens):
        calls = call_steps(steps, budget)
        listed = dict(calls=calls) if calls != budget_steps(steps, len(calls)) else {}  # only where not even
        ops = cost(lambda: run(prompt_ids[:1], torch.Generator(dev).manual_seed(seed), model=eager(model)))[1]
        rows.append(dict(kind=kind, steps=steps, budget=len(calls), **listed, ops=ops,
                         ms_per_image=1000 * sec / n_timed, **score(torch.cat(toks))))
    ref = next(r["ms_per_image"] for r in rows if r["kind"] == "vanilla" and r["steps"] == ref_steps)
    for r in rows:
        r["speedup"] = ref / r["ms_per_image"]
    return rows


if __name__ == "__main__":
    # python bench.py --preset gpu: the model's pretraining MFU and the sampler's images/s, eager and compiled
    import argparse
    import dataclasses

    import config
    import runs
    import train
    from model import MaskedTransformer, encode_prompts
    from world import sample_prompts

    ap = argparse.ArgumentParser(description="Pretraining MFU and sampler images/s on fresh weights, eager and "
                                             "compiled. Other flags are train.py's (--preset, --device, sizes, "
                                             "--batch-size, --sample-steps, --cfg-scale).")
    ap.add_argument("--batches", default="256,4096", help="sampler batch sizes, comma-separated")
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    ap.add_argument("--train-steps", type=int, default=10, help="pretraining steps per timed round")
    args, rest = ap.parse_known_args()
    cfg = config.parse_config(rest, ap.description)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        modes = args.modes.split(",")
        assert min(batches + [args.train_steps]) >= 1 and modes and set(modes) <= {"eager", "compiled"}
    except (ValueError, AssertionError):
        ap.error(f"--batches takes positive integers like 256,4096 and --modes eager and/or compiled, got "
                 f"{args.batches!r} and {args.modes!r}; --train-steps at least 1")
    dev = runs.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = MaskedTransformer(config.model_config(cfg)).to(dev)
    fwd, T, w = forward_flops(model.config), cfg.sample_steps, cfg.cfg_scale
    mfu = lambda flops: f", {flops / PEAK_FLOPS:6.1%} of {PEAK_FLOPS / 1e12:.0f}" if dev.type == "cuda" else ""
    print(f"{dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch {torch.__version__}, "
          f"preset {cfg.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{fwd / 1e9:.3f} GFLOP per sequence forward")
    kw = dict(temperature=cfg.temperature, choice_temperature=cfg.choice_temperature)
    per_image = T * (2 if w else 1) * fwd  # the trunk's FLOPs of one image's sampling
    ids = {B: encode_prompts(sample_prompts(B, torch.Generator().manual_seed(0))).to(dev) for B in batches}
    rows = []

    def pretrain(mode):
        sec = pretrain_speed(dataclasses.replace(cfg, compile=mode == "compiled"), copy.deepcopy(model),
                             train.pretrain_step, args.train_steps)  # a throwaway copy: each mode from the same weights
        flops = 3 * fwd * cfg.batch_size / sec
        return (f"pretrain  {mode:>8} batch {cfg.batch_size:>5}: {1000 * sec:8.2f} ms/step, {flops / 1e12:7.2f} "
                f"model TFLOP/s{mfu(flops)}")

    def sampler(mode, B):
        model.compile_sampling = mode == "compiled"
        per_s, ms, ops = sampler_speed(model.eval(), ids[B], T, w, dev, **kw)
        return (f"sample    {mode:>8} batch {B:>5}: {per_s:10,.1f} images/s ({ms:.3f} ms/image), "
                f"{per_s * per_image / 1e12:7.2f} model TFLOP/s{mfu(per_s * per_image)}; T={T}, CFG {w}, "
                f"{ops} eager ops")

    def check():
        return "compiled vs eager features, relative error: " + ", ".join(
            f"{k} {v:.1e}" for k, v in compiled_check(model).items())
    jobs = [(pretrain, "eager")] + [(sampler, "eager", B) for B in batches]  # eager first: a compile error loses
    jobs += [(check,), (pretrain, "compiled")] + [(sampler, "compiled", B) for B in batches]  # only its own rows
    for fn, *a in jobs:
        if (a[0] if a else "compiled") in modes:
            try:
                rows.append(fn(*a))
            except Exception as e:  # say so and go on to the next measurement
                rows.append(f"{fn.__name__} {' '.join(map(str, a))}: FAILED {type(e).__name__}: {e}"[:400])
            print(rows[-1])
    if "compiled" in modes and dev.type == "cuda":
        from torch._dynamo.utils import counters
        rows.append(f"CUDA graphs skipped: {dict(counters['inductor']).get('cudagraph_skips', 0)} (0: every compiled "
                    "sampling call replayed a graph)")
    print("\n".join(["", "summary:"] + rows))
