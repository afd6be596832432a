"""
MIGM-Shortcut (arXiv 2602.23996): a light net learns how the base model's features move from one
sampling step to the next, so most steps can skip the base model.

  Shortcut              S(prev features, tokens committed at the previous step, mask ratio) ->
                        next features: one pre-LN block at a bottleneck width (D/2) of cross-
                        attention (queries = features, keys/values = the new tokens' embeddings
                        from the frozen base model), FFN, self-attention, FFN; then LN-Linear-GELU-LN
                        and adaLN, once, from a sinusoidal embedding of the mask ratio; output
                        prev + delta (as the paper's code)
  collect               trajectories of the frozen base model, features of both CFG branches
  train_shortcut        MSE on the still-masked positions, validation split, tqdm; unroll > 1 chains
                        several shortcut steps per example (not in the paper; docs/board-world.md,
                        section 4: it lowers the MSE, not the error rate)
  budget_steps          which steps call the base model: 0 and round(steps k / budget), k = 1 .. budget-1
  call_steps            a budget (a number, or a list of steps) -> the steps, checked
  sample_with_shortcut  base calls on those steps, shortcut (or the feature cache) in between;
                        the base head turns features into logits; sample.sample_step does the rest,
                        so sampling rule and generator use are exactly sample.sample's
  (bench.py measures it: step_distance_mse, step_cost and the speed table of vanilla / cache / shortcut)

The net is the paper's code's, trained at its lr 1e-4, with three differences: the output projection
starts at zero (delta = 0: the shortcut begins as the feature cache); the new tokens are keys through an
attention mask over all positions (the same as gathering them), and a step that commits nothing leaves
the cross-attention out; no dropout (the paper's 0.1). (A variant with adaLN on all four LayerNorms
fitted the features better but sampled no better: docs/board-world.md, section 7.)

train.py samples, trains and tables it at the paper's MaskGIT setting: 32 steps, budgets of 10 and 12 base
calls (12 of 32 is the paper's), in the evaluation's commit order, and one row at the evaluation's 12 steps,
where each step moves the features further than the net learnt at 32.
Simplified versus the paper: one block, trained at one step count; the CFG branches
share one shortcut, trained on both; no KV-cache tricks in the base model. Changed: train.py samples with
uncond="cache" (only the conditional branch takes the shortcut; the null-prompt branch keeps its last base
features), up to 3 points more accurate here, mostly on counting prompts; --sc-uncond shortcut is the
paper's way. Tried and removed (docs/board-world.md, sections 4, 5): exact null-prompt features from an extra
base call, and base calls placed where the features move most instead of evenly.
"""

import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from model import autocast, null_prompts
from sample import branch_features, check_sampling, commit_counts, commit_order, guided_logits, sample_step

# ---- The model

def ratio_embedding(ratio, dim):
    """Sinusoidal embedding of the mask ratio in [0, 1], scaled by 1000 as a diffusion timestep: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=ratio.device) / half)  # (half,)
    a = ratio.float()[:, None] * 1000.0 * freqs[None]  # (B, half)
    return torch.cat([a.cos(), a.sin()], -1)


N_HEADS = 4  # attention heads at the bottleneck width (which they must divide)
FREQ_DIM = 256  # sinusoidal features of the mask ratio (the paper's, from DiT)


class Shortcut(nn.Module):
    """forward(prev (B, N, D), new_emb (B, N, D), new_mask (B, N) bool, ratio (B,)) -> next features (B, N, D).
    new_emb: the base model's token + position embeddings of the current state (only the positions in
    new_mask, the tokens committed at the previous step, are attended to); ratio: masked fraction now."""

    def __init__(self, d_model, width=None, n_heads=N_HEADS, mlp_ratio=4):
        super().__init__()
        w = width or d_model // 2
        if w % n_heads:
            raise ValueError(f"width {w} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.f_in, self.e_in = nn.Linear(d_model, w), nn.Linear(d_model, w)  # into the bottleneck
        self.ln = nn.ModuleList(nn.LayerNorm(w) for _ in range(4))  # pre-LN of the block's four sublayers
        self.q, self.kv, self.o_cross = nn.Linear(w, w), nn.Linear(w, 2 * w), nn.Linear(w, w)
        self.qkv, self.o_self = nn.Linear(w, 3 * w), nn.Linear(w, w)
        mlp = lambda: nn.Sequential(nn.Linear(w, mlp_ratio * w), nn.GELU(), nn.Linear(mlp_ratio * w, w))
        self.ff1, self.ff2 = mlp(), mlp()
        self.last = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(), nn.LayerNorm(w))
        self.time = nn.Sequential(nn.Linear(FREQ_DIM, w), nn.SiLU(), nn.Linear(w, w), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, d_model)
        nn.init.zeros_(self.out.weight)  # delta = 0 at the start: the shortcut begins as the feature cache
        nn.init.zeros_(self.out.bias)

    def heads(self, x):  # (B, S, w) -> (B, heads, S, w/heads)
        return x.view(*x.shape[:2], self.n_heads, -1).transpose(1, 2)

    def forward(self, prev, new_emb, new_mask, ratio):
        B, N, _ = prev.shape
        h = self.f_in(prev)  # (B, N, w)
        w = h.shape[-1]
        k, v = self.kv(self.e_in(new_emb)).chunk(2, -1)  # (B, N, w) each; only new_mask's positions are keys
        some = new_mask.any(1)  # (B,): a step that committed nothing leaves nothing to attend to
        keep = (new_mask | ~some[:, None])[:, None, None, :]  # (B, 1, 1, N); such rows' output is zeroed below
        a = F.scaled_dot_product_attention(self.heads(self.q(self.ln[0](h))), self.heads(k), self.heads(v),
                                           attn_mask=keep)  # features look at the new tokens
        h = h + self.o_cross(a.transpose(1, 2).reshape(B, N, w)) * some[:, None, None]
        h = h + self.ff1(self.ln[1](h))
        q, k, v = self.qkv(self.ln[2](h)).chunk(3, -1)
        a = F.scaled_dot_product_attention(self.heads(q), self.heads(k), self.heads(v))  # (B, heads, N, w/heads)
        h = h + self.o_self(a.transpose(1, 2).reshape(B, N, w))
        h = h + self.ff2(self.ln[3](h))
        scale, shift = self.time(ratio_embedding(ratio, FREQ_DIM))[:, None].chunk(2, -1)  # (B, 1, w) each
        h = self.last(h) * (1 + scale) + shift  # adaLN, once, at the output (as the paper's code)
        return prev + self.out(h)  # (B, N, D)


# ---- Budgeted sampling (base model, shortcut, or cache between base calls)

def budget_steps(steps, budget):
    """The steps (of `steps`) that call the base model with `budget` calls: 0 and round(steps * k / budget),
    k = 1 .. budget - 1 (Python's round: halves go to the even neighbour)."""
    if not 1 <= budget <= steps:
        raise ValueError(f"need 1 <= budget <= steps, got budget={budget}, steps={steps}")
    return [0] + [round(steps * k / budget) for k in range(1, budget)]


def call_steps(steps, budget):
    """The steps that call the base model: budget_steps(steps, budget) for a number, the list itself for a list
    (calls placed by hand), checked to start at step 0 and lie inside the run."""
    calls = list(budget) if isinstance(budget, (list, tuple)) else budget_steps(steps, budget)
    if 0 not in calls or not set(calls) <= set(range(steps)):
        raise ValueError(f"the base-model steps must include 0 and lie in [0, {steps}), got {sorted(calls)}")
    return calls


@torch.no_grad()
def sample_with_shortcut(model, shortcut, prompt_ids, steps, budget, cfg_scale=0.0, temperature=1.0,
                         choice_temperature=4.5, mode="confidence", generator=None, cache=False, record=False,
                         uncond="shortcut"):
    """Like sample.sample, but only the call_steps(steps, budget) call the base model (budget a number: evenly
    spaced, budget_steps; a list: those steps); the other steps take the shortcut's predicted
    features (cache=True: the last base features unchanged). budget == steps is exactly sample.sample.
    uncond="cache": with CFG, only the conditional branch takes the shortcut and the null-prompt branch keeps
    its last base features (not the paper, which propagates both; docs/board-world.md, section 4: it measured
    better).
    record=True -> (tokens, dict(feats (T, cB, N, D), states, committed (T, B, N)))."""
    if uncond not in ("shortcut", "cache"):
        raise ValueError(f"uncond must be 'shortcut' or 'cache', got {uncond!r}")
    check_sampling(prompt_ids, temperature)
    B, N = prompt_ids.shape[0], model.config.n_tokens
    commits = commit_counts(steps, N)
    calls = set(call_steps(steps, budget))
    order = commit_order(mode, B, N, generator, prompt_ids.device)  # (B, N) for "halton", else None
    state = torch.full((B, N), model.mask_id, dtype=torch.long, device=prompt_ids.device)
    c = 2 if cfg_scale else 1
    feats = committed = None
    rec = dict(feats=[], states=[], committed=[])
    with autocast(state.device):  # one region for the loop, as in sample.sample: bf16 weight copies made once
        for t in range(steps):
            if t in calls:
                feats = branch_features(model, state, prompt_ids, cfg_scale, sampling=True)  # (cB, N, D)
            elif not cache:
                n = 1 if uncond == "cache" else c  # branches the shortcut moves: rows [0, nB) of feats
                ratio = (state == model.mask_id).float().mean(1).repeat(n)  # (nB,)
                new_emb = model.embed_tokens(state).repeat(n, 1, 1)
                moved = shortcut(feats[: n * B], new_emb, committed.repeat(n, 1), ratio)
                feats = torch.cat([moved.to(feats.dtype), feats[n * B:]])  # (cB, N, D)
            logits = guided_logits(model, feats, cfg_scale)  # (B, N, K)
            new, committed, _, _, _ = sample_step(logits, state, model.mask_id, t, steps, commits[t], mode,
                                                  choice_temperature, generator, temperature, order=order)
            if record:
                rec["feats"].append(feats.float())
                rec["states"].append(state)
                rec["committed"].append(committed)
            state = new
    return (state, {k: torch.stack(v) for k, v in rec.items()}) if record else state


# ---- Training on the base model's trajectories

@torch.no_grad()
def collect(model, prompt_ids, steps, cfg_scale, temperature, choice_temperature, generator, batch=256,
            mode="confidence"):
    """Base-model trajectories for the shortcut, sampled in commit order `mode`: feats (T, cP, N, D) (float16 to
    save memory), and for the matching rows the input states and commits (T, cP, N) and which trajectory a row is
    (cP,). Both CFG branches are rows (per batch the conditional ones first)."""
    out = dict(feats=[], states=[], committed=[], traj=[])
    c = 2 if cfg_scale else 1
    for i in tqdm(range(0, len(prompt_ids), batch), desc="trajectories", leave=False):
        ids = prompt_ids[i:i + batch]
        _, rec = sample_with_shortcut(model, None, ids, steps, steps, cfg_scale, temperature,
                                      choice_temperature, mode, generator, record=True)
        out["feats"].append(rec["feats"].half())
        for k in ("states", "committed"):  # the same for both branches
            out[k].append(rec[k].repeat(1, c, 1))
        out["traj"].append(torch.arange(i, i + len(ids), device=ids.device).repeat(c)[None])
    out = {k: torch.cat(v, 1) for k, v in out.items()}
    out["traj"] = out["traj"][0]
    return out


def split_rows(data, val_frac=0.1):
    """(train rows, validation rows): whole trajectories (both CFG branches) go to one side."""
    n_val = max(1, int((data["traj"].max().item() + 1) * val_frac))
    val = data["traj"] < n_val
    return (~val).nonzero()[:, 0], val.nonzero()[:, 0]


def chain(shortcut, model, data, t, d, rows):
    """Shortcut steps t -> t+1 -> ... -> t+d from the true base features at step t, each step fed its own
    previous prediction and the true committed tokens. Yields (step s, predicted features (b, N, D))."""
    pred = data["feats"][t, rows].float()
    for s in range(t + 1, t + d + 1):
        state = data["states"][s, rows]
        with torch.no_grad():  # the base model's embeddings are an input here: it stays as it is
            new_emb = model.embed_tokens(state)  # (b, N, D)
        pred = shortcut(pred, new_emb, data["committed"][s - 1, rows], (state == model.mask_id).float().mean(1))
        yield s, pred


def masked_sq(pred, data, s, rows, mask_id):
    """(summed squared error, number of entries) against the base features of step s, on the positions
    still masked at step s."""
    target = data["feats"][s, rows].float()
    m = (data["states"][s, rows] == mask_id)[..., None].float()  # (b, N, 1)
    return (((pred - target) ** 2) * m).sum(), m.sum() * target.shape[-1]


def masked_mse(pred, data, s, rows, mask_id):
    """MSE to the base features of step s on the positions still masked at step s."""
    sq, n = masked_sq(pred, data, s, rows, mask_id)
    return sq / n.clamp(min=1)


def chain_loss(shortcut, model, data, t, d, rows):
    """Mean over the d steps of chain(...) of the masked MSE."""
    steps = chain(shortcut, model, data, t, d, rows)
    return sum(masked_mse(pred, data, s, rows, model.mask_id) for s, pred in steps) / d


def train_shortcut(shortcut, model, data, iters=1000, batch=64, lr=1e-3, val_frac=0.1, generator=None, unroll=1,
                   sync=lambda params: None):
    """AdamW on random (trajectory, step) transitions; returns a log with train and validation MSE (one step
    ahead). unroll > 1: each example chains up to that many shortcut steps from a true base step (the way the
    sampler uses it between base calls) and the loss averages them; unroll=1 is the paper's one-step target;
    sync(params) runs between the backward and the step (data parallel: dist.sync_grads)."""
    T = data["feats"].shape[0]
    tr, val = split_rows(data, val_frac)  # held-out trajectories
    opt = torch.optim.AdamW(shortcut.parameters(), lr=lr, weight_decay=0.0)
    log, bar = [], tqdm(range(iters), desc="shortcut")
    for it in bar:
        t = int(torch.randint(0, T - 1, (1,), generator=generator))  # the true step the chain starts from
        d = min(unroll, T - 1 - t)
        rows = tr[torch.randint(len(tr), (batch,), generator=generator).to(tr.device)]
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (it + 1) / 50) * 0.5 * (1 + math.cos(math.pi * it / iters))
        loss = chain_loss(shortcut, model, data, t, d, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(shortcut.parameters())
        opt.step()
        if it % 50 == 0 or it == iters - 1:
            with torch.no_grad():  # one step ahead, the shortcut vs the cache (step s's features reused)
                v = [(chain_loss(shortcut, model, data, s, 1, val).item(),
                      masked_mse(data["feats"][s, val].float(), data, s + 1, val, model.mask_id).item())
                     for s in range(T - 1)]
            log.append(dict(iter=it, train=loss.item(), val=sum(a for a, _ in v) / len(v),
                            val_cache=sum(b for _, b in v) / len(v)))
            bar.set_postfix(val=f"{log[-1]['val']:.3g}", cache=f"{log[-1]['val_cache']:.3g}")
    return log


if __name__ == "__main__":
    import report
    import rewards
    import runs
    import world
    from bench import time_interleaved
    from model import encode_prompts
    ap = argparse.ArgumentParser(description="A run's shortcut: its speed table, or --prompt sampled both ways.")
    ap.add_argument("--ckpt", "--out", dest="ckpt", default="out", help="train.py's output folder (shortcut.pt)")
    ap.add_argument("--prompt", default=None, help="sample this prompt both ways and write shortcut.png")
    ap.add_argument("--budget", type=int, default=None, help="base-model calls (default: the table's largest budget)")
    ap.add_argument("--n", type=int, default=8, help="samples per sampler: the timed batch (the PNG shows 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    net, ck = runs.load_shortcut(args.ckpt, dev := runs.pick_device(args.device))
    if args.prompt is None:
        print("\n".join(report.speed_table_lines(ck["table"])))
        raise SystemExit
    model, vq, cfg = runs.load_generator(args.ckpt, dev)
    T, default, order = runs.shortcut_setting(ck, cfg)  # the steps it was trained at; 32 steps: 12 calls, the paper's
    budget = default if args.budget is None else args.budget
    if (problem := world.prompt_error(args.prompt)) or not 1 <= budget <= T or args.n < 1:
        ap.error(problem or f"--budget must be between 1 and the shortcut's {T} sampling steps and "
                                                    f"--n at least 1, got {budget} and {args.n}")
    ids, show, prompts = encode_prompts([args.prompt] * args.n).to(dev), min(args.n, 8), [args.prompt] * args.n
    samplers = {f"vanilla, {T} steps": T, f"shortcut, {budget} base calls": budget}
    kw = dict(cfg_scale=cfg.cfg_scale, temperature=cfg.temperature, choice_temperature=cfg.choice_temperature,
              uncond=ck["config"]["sc_uncond"], mode=order)  # as its table sampled
    fns = [lambda b=b: sample_with_shortcut(model, net, ids, T, b, generator=torch.Generator(dev).manual_seed(
        args.seed), **kw) for b in samplers.values()]
    images, captions = [], []
    for name, fn, sec in zip(samplers, fns, time_interleaved(fns, dev, rounds=3)):  # median of 3 rounds
        r = rewards.reward((img := vq.decode(fn())).cpu(), prompts)  # the same seed: the timed samples again
        images.append(img[:show])
        captions += [f"{name}: {c}" for c in report.verdict_captions(prompts[:show], r[:show])]
        print(f"{name}: accuracy {(r >= 1).float().mean():.0%} on {args.n} samples, "
              f"{1000 * sec / args.n:.2f} ms/image ({dev.type}, batch {args.n})")
    report.save_grid(torch.cat(images), captions, path := os.path.join(args.ckpt, "shortcut.png"), cols=show)
    print(f"wrote {path}: vanilla samples on the first row, the shortcut's on the second")
