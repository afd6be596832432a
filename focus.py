"""
Spend the RL gradient where it matters: critical steps, critical tokens, entropy routing.

  information_gain    MaskFocus (arXiv 2512.18766): embed each step's predicted clean image x0_t
                      with the codebook, s_t = cos(flatten E[x0_t], flatten E[final]); the gain of
                      step t is |s_{t+1} - s_t|, how much the tokens committed at step t moved the
                      model's picture of the final image
  critical_steps      the k steps with the largest gain, sorted (k = 6 of 64 in MaskFocus's script)
  entropy_temperature MaskFocus's routing: samples that are already sure of themselves (summed
                      entropy below the batch median) sample with tau = 2.5 exp(-H/3) + 0.7 per token
  critical_tokens     GCPO (arXiv 2509.22485) moved from AR to masked generation: 10% earliest
                      committed, 10% sharpest edges of the entropy map (among the 10%-90% of the
                      generation order), 10% least alike across the group; disjoint, 30% in all,
                      the loss sees only those
  token_weights       GCPO's dynamic weight: running mean over the generation order of
                      exp(clip(logp - ref, -0.5, 0.5)), over every scored token (before the
                      critical-token loss mask, as GCPO)
  focus_steps, gcpo_hooks   what grpo.rl_step takes to score MaskFocus's steps and GCPO's tokens
                      (routing is sample's token_temperature=entropy_temperature)

Choices and simplifications, plainly:
  - Critical steps are chosen per batch by default (s_t averaged over the batch before the gain), as
    in the MaskFocus code: a batch-level choice is less noisy than one sample's. focus_steps(per_sample=
    True) gives every sample its own k steps instead (the same number of model calls: call s scores
    each sample at its own s-th step); docs/board-world.md, section 3 compares the two.
  - Gain index: gain_t = |s_{t+1} - s_t| belongs to step t, the step whose commits caused the
    change; x0 of the last step is the final image, so the last step's gain is 0.
  - "Codebook embedding" here is the VQ code itself (a p x p RGB patch, 3p^2 numbers): our codebook is
    k-means in pixel space. The black background code is the zero vector, so in s_t only the
    objects count, which is what we want; for group similarity two equal tokens count as 1.
  - GCPO's "generation order" is the step at which a position was committed; ties (one step commits
    many) are broken by the entropy the position had then (less certain first).
  - Entropy of a token for the GCPO map: the policy entropy at the step it was committed. GCPO smooths
    it with a causal mean (the token, its left, upper-left, upper and upper-right neighbours: what an
    AR model has seen); a masked model sees both sides, so we take the mean over the whole 3x3
    neighbourhood. Both average fewer cells at the border (no padding) and both take one-sided
    differences there (torch.gradient), as GCPO does.
  - GCPO's weight is not detached in its code: the gradient also flows through the running mean,
    an extra, unclipped policy-gradient term on every earlier token. We detach it, so the weight
    only rescales each token's advantage, which is what the paper describes.
  - Entropy routing: tau = 2.5 exp(-H/3) + 0.7 was tuned for Meissonic's 8,192-code book (H up to
    about 9, so tau spans 0.82-3.2 and uncertain tokens are cooled). With K codes H <= ln K, so
    tau >= 2.5 K^(-1/3) + 0.7: 1.33 at K = 64. Here every routed token is heated, none cooled.
  - Routing changes the rollout policy only; use it with the remask estimator (the replay estimator
    would have to re-apply the per-token temperatures; train.py refuses that combination).
  - MaskFocus conditions on the step's timestep; our model has no timestep input (the mask count
    carries it), so a chosen step is scored at its mask count only.
"""

import math

import torch
import torch.nn.functional as F

import grpo

# ---- Critical steps (MaskFocus)

def step_similarity(traj, embeddings):
    """(B, T): cosine of each step's predicted clean image x0_t to the final image, in embedding space.
    embeddings (K, E), e.g. the VQ codes."""
    T, B, N = traj.x0.shape
    E = embeddings.to(traj.x0.device).float()
    x0 = E[traj.x0].reshape(T, B, -1)  # (T, B, N*E)
    fin = E[traj.final].reshape(1, B, -1)  # (1, B, N*E)
    return F.cosine_similarity(x0, fin, dim=-1, eps=1e-8).T  # (B, T)


def information_gain(traj, embeddings, per_sample=False):
    """gain_t = |s_{t+1} - s_t| for t < T-1 and 0 for the last step: (T,) averaged over the batch
    (MaskFocus), or (B, T) with per_sample=True."""
    s = step_similarity(traj, embeddings)  # (B, T)
    if not per_sample:
        s = s.mean(0, keepdim=True)  # (1, T)
    gain = torch.zeros_like(s)
    gain[:, :-1] = (s[:, 1:] - s[:, :-1]).abs()
    return gain if per_sample else gain[0]


def critical_steps(gain, k):
    """The k steps with the largest gain, sorted ascending: gain (T,) -> a list of k steps (per batch);
    gain (B, T) -> a (B, k) long tensor, each sample's own steps (grpo.rl_step takes either)."""
    if not 1 <= k <= gain.shape[-1]:
        raise ValueError(f"k must be in [1, {gain.shape[-1]}], got {k}")
    top = gain.topk(k, dim=-1).indices.sort(-1).values
    return top.tolist() if gain.ndim == 1 else top


# ---- Entropy routing (MaskFocus)

def entropy_temperature(logits, entropy, masked):
    """Per-token temperatures (B, N) for sample(..., token_temperature=entropy_temperature).
    entropy, masked: (B, N). Samples whose summed entropy over masked tokens is below the batch
    median get tau = 2.5 exp(-H/3) + 0.7 (confident tokens get hotter, up to 3.2); the rest keep 1."""
    total = (entropy * masked).sum(1)  # (B,)
    low = total < total.quantile(0.5)  # (B,); the true median (torch.median takes the lower middle)
    tau = 2.5 * torch.exp(-entropy / 3) + 0.7  # (B, N)
    return torch.where(low[:, None], tau, torch.ones_like(tau))


# ---- Critical tokens and dynamic weights (GCPO, adapted)

def commit_step(traj):
    """(B, N): the step at which each position was committed."""
    return traj.committed.float().argmax(0)


def entropy_edges(ent_map, side, smooth=True):
    """|grad| of the neighbour-smoothed entropy map. ent_map (B, N) on a side x side grid -> (B, N).
    Smoothing: the mean over the cells of each 3x3 neighbourhood that lie on the grid (no padding: a border
    cell averages 6, a corner 4). That flattens a ramp near the border: on a linear ramp of slope a the
    border column scores a/2 and the next one 3a/4 against a inside. Gradient: central differences inside,
    one-sided at the border (GCPO; torch.gradient), so without smoothing a ramp scores a everywhere."""
    x = ent_map.reshape(-1, 1, side, side).float()
    if smooth:
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    dy, dx = torch.gradient(x[:, 0], dim=(1, 2))  # (B, side, side) each
    return torch.sqrt(dx ** 2 + dy ** 2).reshape(ent_map.shape)


def group_similarity(final, group_size, embeddings=None):
    """(B, N): at each position, the mean pairwise similarity of the tokens the G samples of one prompt
    put there (cosine of embeddings; equal tokens count 1). Shared by the samples of a group."""
    B, N = final.shape
    G = group_size
    if B % G:
        raise ValueError(f"group similarity needs whole groups: batch {B} is not a multiple of group_size {G}")
    f = final.view(-1, G, N)  # (P, G, N)
    same = (f[:, :, None] == f[:, None]).float()  # (P, G, G, N)
    if embeddings is not None:
        e = F.normalize(embeddings.to(final.device).float()[f], dim=-1, eps=1e-8)  # (P, G, N, E)
        cos = torch.einsum("pinc,pjnc->pijn", e, e)
        same = torch.maximum(same, cos)
    off = 1 - torch.eye(G, device=final.device)[None, :, :, None]  # leave out i == j
    sim = (same * off).sum((1, 2)) / max(1, G * (G - 1))  # (P, N)
    return sim.repeat_interleave(G, 0)  # (B, N)


def critical_tokens(traj, group_size, frac=0.3, embeddings=None):
    """(B, N) bool, exactly round(frac * N) positions per sample, the union of three disjoint sets:
    the earliest committed, the largest entropy-map gradients, the least alike across the group."""
    B, N = traj.final.shape
    side = math.isqrt(N)
    if not 0 < frac <= 1:
        raise ValueError(f"frac is the share of the N tokens to pick, in (0, 1]; got {frac}")
    if side * side != N:
        raise ValueError(f"critical_tokens needs a square token grid, got N={N} tokens")
    n_total = round(frac * N)
    n1 = n2 = round(frac * N / 3)
    n3 = n_total - n1 - n2
    step = commit_step(traj)  # (B, N)
    ent_at_commit = traj.entropy.gather(0, step[None])[0]  # (B, N): entropy when it was committed
    # generation order: earliest commit step first; ties -> higher entropy at commit first
    early = -step.float() + 0.5 * ent_at_commit / (ent_at_commit.max() + 1e-8)  # (B, N)
    rank = early.argsort(1, descending=True).argsort(1)  # (B, N): 0 = generated first
    late = rank >= N - round(0.1 * N)  # GCPO looks for edges only between 10% and 90% of the order
    sets = [
        # 1. causal dependency: the first in generation order
        (early, n1),
        # 2. entropy-induced structure: sharp edges of the smoothed entropy map
        (entropy_edges(ent_at_commit, side).masked_fill(late, -math.inf), n2),
        # 3. group diversity: least similar across the group at that position
        (-group_similarity(traj.final, group_size, embeddings), n3),
    ]
    chosen = torch.zeros(B, N, dtype=torch.bool, device=traj.final.device)
    for score, n in sets:  # each set: the n highest scores among the positions not chosen yet
        idx = score.masked_fill(chosen, -math.inf).topk(n, dim=1).indices
        chosen = chosen.scatter(1, idx, True)
    return chosen


def token_weights(logp, ref_logp, mask=None, order=None):
    """GCPO's weight: the running mean, over the generation order, of exp(clip(logp - ref, -0.5, 0.5)).
    logp, ref_logp, mask: (B, S, N) (or (B, N)); order (B, N): a position's rank in generation
    (commit step), None = position order. mask: the positions that *have* a log-prob (every token the
    estimator scores, before the critical-token loss mask: GCPO's mean runs over all generated tokens);
    the others do not enter the mean and get weight 1. Detached (module docstring: why)."""
    shape = grpo.same_shape("logp, ref_logp (and mask)", logp, ref_logp, mask)
    if len(shape) not in (2, 3) or (order is not None and tuple(order.shape) != shape[:1] + shape[-1:]):
        raise ValueError(f"logp, ref_logp (and mask) must share one shape (B, S, N) or (B, N) and order be (B, N), "
                         f"got {shape} and order {None if order is None else tuple(order.shape)}")
    with torch.no_grad():
        v = torch.exp((logp - ref_logp).clamp(-0.5, 0.5))
        m = torch.ones_like(v) if mask is None else mask.float()
        if order is None:
            order = torch.arange(v.shape[-1], device=v.device).expand(v.shape[0], -1)
        order = order.view(order.shape[0], *([1] * (v.ndim - 2)), order.shape[-1]).expand_as(v)
        perm = order.argsort(dim=-1, stable=True)
        vs, ms = (v * m).gather(-1, perm), m.gather(-1, perm)
        run = vs.cumsum(-1) / ms.cumsum(-1).clamp(min=1)  # running mean in generation order
        w = torch.empty_like(v).scatter_(-1, perm, run)
        return torch.where(m > 0, w, torch.ones_like(w))


# ---- What grpo.rl_step takes: the steps to score, and GCPO's token hooks

def focus_steps(embeddings, k, per_sample=False):
    """grpo.rl_step's `steps` for MaskFocus: traj -> its k critical steps (the batch's, or each sample's own).
    embeddings (K, E): the codebook vectors."""
    return lambda traj: critical_steps(information_gain(traj, embeddings, per_sample), k)


def gcpo_hooks(group_size, embeddings, frac=0.3):
    """grpo.rl_step's (pick_tokens, weigh_tokens) for GCPO: the loss sees the critical 30% of the positions,
    each weighed by the policy/reference divergence over every scored token in generation order."""
    pick = lambda traj: critical_tokens(traj, group_size, frac, embeddings)
    weigh = lambda old, ref, mask, traj: token_weights(old, ref, mask, commit_step(traj))
    return pick, weigh


if __name__ == "__main__":
    # python focus.py --ckpt out: the steps MaskFocus would score on a finished run's rollouts, and a picture of one
    import argparse
    import os

    import probe
    import report
    import runs
    import world
    from model import encode_prompts
    from sample import sample

    ap = argparse.ArgumentParser(description="Which steps focus.py picks on rollouts of a run made by train.py.")
    ap.add_argument("--ckpt", "--out", dest="ckpt", default="out", help="train.py's output folder")
    ap.add_argument("--pretrained", action="store_true", help="the pretrained weights instead of the RL ones")
    for name, default, what in [("batches", 20, "rollout batches"), ("prompts", 8, "prompts per batch"),
                                ("group", 8, "samples per prompt"), ("k", 4, "critical steps"),
                                ("steps", None, "sampling steps T (default: the run's)")]:
        ap.add_argument(f"--{name}", type=int, default=default, help=what)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    model, vq, cfg = runs.load_generator(args.ckpt, runs.pick_device(args.device), pretrained=args.pretrained)
    T, dev = cfg.sample_steps if args.steps is None else args.steps, vq.codes.device
    if min(args.batches, args.prompts) < 1 or args.group < 2 or not 1 <= args.k <= T <= model.config.n_tokens:
        ap.error(f"need 1 <= --k <= --steps (the run's {T}), --batches, --prompts >= 1 and --group >= 2; got {args}")
    g, g_prompts, gains = torch.Generator(dev).manual_seed(0), torch.Generator().manual_seed(1), []
    for _ in range(args.batches):  # rollouts as in the RL stage: G samples per prompt, in the run's rollout order
        prompts = [p for p in world.sample_prompts(args.prompts, g_prompts) for _ in range(args.group)]
        tokens, traj = sample(model, encode_prompts(prompts).to(dev), T, cfg.cfg_scale, cfg.temperature,
                              cfg.choice_temperature, mode=cfg.rl_mode, generator=g, record=True)
        gains.append(information_gain(traj, vq.codes))
    gain = torch.stack(gains).mean(0)
    print(f"mean information gain per step (T={T}): " + " ".join(f"{x:.3f}" for x in gain.tolist()))
    print(f"critical steps (k={args.k}) of the mean: {critical_steps(gain, args.k)}")
    print(probe.report(model, cfg, probe.part_labels(vq, cfg.image_size, cfg.grid)))  # binding and relations
    path = os.path.join(args.ckpt, "focus_demo.png")
    report.trajectory_strip(vq.decode(traj.x0[:, 0]).cpu(), step_similarity(traj, vq.codes)[0],
                            critical_steps(information_gain(traj, vq.codes, per_sample=True)[0], args.k), path)
    print(f"wrote {path}: the first sample's x0 at each step, its similarity to the final image, its critical steps")
