"""
MaskGIT parallel decoding, with the whole trajectory recorded for RL.

Start from all-[MASK]; at step t = 0..T-1 the model predicts every position, a token is
sampled at every masked position, and some of them are committed (kept for good):

  confidence  MaskGIT (arXiv 2202.04200): after step t exactly mask_counts(T, N)[t] =
              floor(N * cos(pi/2 * (t+1)/T)) tokens stay masked (each step commits at least
              one, the last commits all); the ones kept are the most confident, confidence =
              log p(sampled) + choice_temperature * (1 - (t+1)/T) * Gumbel noise.
  halton      the Halton scheduler (Besnier et al., arXiv 2503.17076): positions are committed in a
              fixed order, the points of a 2-D Halton sequence on the token grid (halton_order), each
              sample's order rolled by a random offset; step t commits the next commit_counts(T, N)[t]
              of them (the cosine schedule above; the paper uses an arccos one). The tokens are still
              sampled from the model, but no confidence decides where: each step's tokens lie far
              apart, so fewer of them belong to one object. For RL the order is fixed, so (as with the
              stochastic sampler) the ordering decision that gets no gradient is gone. Versus the public
              code: it also rewrites the tokens at every position revealed so far (here a committed token
              stays, as in MaskGIT); its sequence starts at point 1 (here 0: position (0, 0) first), takes
              the base-2 value as the row (here the column) and rolls the list only when asked (here always).
  spread      MaskGIT's confidence order, but one step never commits two *uncertain* tokens (sampled with
              probability at most SURE) closer than half the grid's side (Chebyshev distance on the token grid;
              4 of 8 here, farther than an object spans, at most 3/8 of the side): the best candidates are
              taken greedily, and an uncertain pick rules out the uncertain ones near it for this step (when
              too few are left, the best ruled-out ones fill up). So an object's parts are committed at
              different steps, each seeing the ones before, and do not come from two guesses of where the
              object lies; sure tokens (the background) are still committed side by side. Not in any of
              the four papers; the Halton scheduler's reason (a step's tokens far apart) with confidence
              still choosing which (docs/FINDINGS.md, section 18).
  stochastic  MaskGRPO's ancestral sampler (arXiv 2510.02880): every masked token is committed
              independently with probability (k_t - k_{t+1}) / k_t, k_t = cos(pi/2 * t/T).
              No confidence ordering, so rollouts are more diverse; the counts are random.

Classifier-free guidance mixes a conditional and a null-prompt pass,
logits = uncond + w * (cond - uncond) (constant w; the papers often ramp it up). w = 0 is the
switch that turns CFG off: one conditional pass, the logits of w = 1 at half the cost (not the
unconditional logits the formula would give at w = 0).
Temperature divides the logits, and `token_temperature(logits, entropy, masked)` may
return per-token temperatures (B, N) that divide them too (focus.py plugs MaskFocus's entropy
routing in here; the entropy it gets is that of the raw guided logits, as in MaskFocus).
All randomness comes from the explicit torch.Generator: same seed, same device, same images.
"""

import argparse
import functools
import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from model import autocast, check_prompt_ids, null_prompts


def mask_counts(T, N):
    """Tokens still masked after each step t = 0..T-1: floor(N cos(pi/2 (t+1)/T)), at least one
    committed per step, zero after the last."""
    if not 1 <= T <= N:
        raise ValueError(f"need 1 <= steps <= tokens, got steps={T}, tokens={N}")
    out, left = [], N
    for t in range(T):
        m = 0 if t == T - 1 else min(math.floor(N * math.cos(math.pi / 2 * (t + 1) / T)), left - 1)
        m = max(m, T - 1 - t)  # leave at least one token for each later step
        out.append(m)
        left = m
    return out


def commit_counts(T, N):
    """Tokens the confidence, spread and Halton orders commit at each step t = 0..T-1 (they sum to N). Known in
    advance, so sample_step never has to ask the device how many tokens are still masked (a host sync per step)."""
    left = [N] + mask_counts(T, N)
    return [a - b for a, b in zip(left, left[1:])]


def radical_inverse(i, base):
    """i's digits in `base` mirrored behind the point: 1 -> 0.1, 2 -> 0.01, 3 -> 0.11 in base 2."""
    x, f = 0.0, 1.0 / base
    while i:
        i, digit = divmod(i, base)
        x, f = x + digit * f, f / base
    return x


@functools.cache
def halton_order(side):
    """The side x side token grid's positions (row-major indices) in the order of the 2-D Halton sequence
    (base 2 across, base 3 down), a point's first visit only: consecutive positions lie far apart. A tuple,
    computed once per grid size."""
    order, i = {}, 0  # a dict keeps the first visits in order
    while len(order) < side * side:
        order.setdefault(int(radical_inverse(i, 3) * side) * side + int(radical_inverse(i, 2) * side))
        i += 1
    return tuple(order)


def commit_order(mode, B, N, generator, device):
    """For mode "halton": each position's place in its sample's order (B, N) long, halton_order rolled by a
    random offset per sample (positions with a smaller place are committed first). None for the other modes
    (they draw no random numbers here, so their samples do not change)."""
    if mode != "halton":
        return None
    side = math.isqrt(N)
    if side * side != N:
        raise ValueError(f"the halton order needs a square token grid, got {N} tokens")
    place = torch.empty(N, dtype=torch.long)
    place[torch.tensor(halton_order(side))] = torch.arange(N)  # (N,) place of each position in the order
    offset = torch.randint(N, (B, 1), generator=generator, device=device)  # (B, 1)
    return (place.to(device) - offset) % N  # (B, N): the order starts at a random point of the list


SURE = 0.9  # "spread": a token sampled with a probability above this may sit beside another of its step


@functools.cache
def near_positions(side, device):
    """(N, N) bool on the side x side grid: positions closer than side // 2 in Chebyshev distance (itself too)."""
    pos = torch.arange(side * side, device=device)
    r, c = pos // side, pos % side  # (N,) row and column of each position
    return torch.maximum((r[:, None] - r).abs(), (c[:, None] - c).abs()) < max(1, side // 2)


def spread_top(conf, sure, n):
    """The "spread" order's commits (B, N) bool: n positions per row, best conf (B, N) first (-inf: not a
    candidate), skipping an uncertain one (~sure) near an uncertain one already taken (near_positions);
    the best skipped candidates fill up when too few are left. A loop of n small steps, no host reads."""
    B, N = conf.shape
    if math.isqrt(N) ** 2 != N:
        raise ValueError(f"the spread order needs a square token grid, got {N} tokens")
    near, rows = near_positions(math.isqrt(N), str(conf.device)), torch.arange(B, device=conf.device)
    taken, ruled_out, left = torch.zeros_like(sure), torch.zeros_like(sure), conf.clone()  # left: -inf once taken
    for _ in range(n):
        free = left.masked_fill(ruled_out, -math.inf)  # (B, N)
        pick = torch.where(free.amax(1) > -math.inf, free.argmax(1), left.argmax(1))  # (B,) else the best left
        taken[rows, pick], left[rows, pick] = True, -math.inf
        ruled_out |= near[pick] & ~sure & ~sure[rows, pick, None]  # uncertain, near an uncertain pick
    return taken


@dataclass
class Trajectory:
    """What happened at every step t of a sampling run (T steps, B samples, N tokens, D features).

    states     (T, B, N) long   the input at step t (mask id where masked); states[0] is all mask
    committed  (T, B, N) bool   positions committed at step t; over t they partition the N positions
    tokens     (T, B, N) long   the token sampled at every position at step t (kept where committed)
    logp       (T, B, N) float  log-prob of tokens[t] under the sampling policy (CFG, temperatures)
    entropy    (T, B, N) float  entropy of that policy at each position (0 where not masked)
    x0         (T, B, N) long   predicted clean image at step t: known tokens + tokens[t] elsewhere
    features   (T, B, N, D) float or None: the conditional branch's final features at step t
    final      (B, N) long      the finished sample (== states[T-1] with the last commits applied)
    prompt_ids (B, L) long; cfg_scale, temperature: the settings the policy was sampled with
    """
    states: torch.Tensor
    committed: torch.Tensor
    tokens: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    x0: torch.Tensor
    features: Optional[torch.Tensor]
    final: torch.Tensor
    prompt_ids: torch.Tensor
    cfg_scale: float
    temperature: float

    def rows(self, r):
        """The trajectory of samples r (a slice) only: a micro-batch of the rollouts."""
        per_step = {k: None if (v := getattr(self, k)) is None else v[:, r]
                    for k in ("states", "committed", "tokens", "logp", "entropy", "x0", "features")}  # (T, B, ...)
        return replace(self, **per_step, final=self.final[r], prompt_ids=self.prompt_ids[r])


def branch_features(model, state, prompt_ids, cfg_scale, sampling=False, detach_uncond=False):
    """Final features (cB, N, D) for one step: with CFG the conditional rows, then the null prompt's.
    sampling=True (the sampling loops, never a loss): compiled when the model's compile_sampling is set.
    detach_uncond under autograd: the null prompt's rows run apart, without a graph (in one batch the backward would
    cost as much again for rows whose gradient is zero); the conditional rows first (under an outer CUDA autocast
    region, weights cast inside no_grad would be cached without a graph)."""
    B = state.shape[0]
    if cfg_scale and detach_uncond and torch.is_grad_enabled():
        cond = branch_features(model, state, prompt_ids, 0.0)
        with torch.no_grad():
            uncond = branch_features(model, state, null_prompts(B, state.device), 0.0)
        return torch.cat([cond, uncond])
    if cfg_scale:
        state, prompt_ids = torch.cat([state, state]), torch.cat([prompt_ids, null_prompts(B, state.device)])
    with autocast(state.device):
        if sampling and getattr(model, "compile_sampling", False):
            return compiled_features(model, state, prompt_ids)
        return model.features(state, prompt_ids)


def compiled_features(model, tokens, prompt_ids):
    """model.features(tokens, prompt_ids) through torch.compile (train.py --compile), mode "reduce-overhead": on
    CUDA its CUDA graphs replay the trunk's hundred-odd kernels as one launch, and a small model's
    sampling step waits on launches more than on FLOPs. A graph's outputs are overwritten by its next replay,
    so the features are cloned out. One compilation per model class serves every model of it (a second batch
    shape recompiles once, with the batch dynamic from then on; CUDA graphs record each shape once)."""
    cuda = tokens.device.type == "cuda"
    if cuda:
        torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are no longer read
    feats = _compiled(type(model).features)(model, tokens, prompt_ids)
    return feats.clone() if cuda else feats


@functools.cache
def _compiled(fn):
    return torch.compile(fn, mode="reduce-overhead")  # elsewhere than CUDA the same, without CUDA graphs


def guided_logits(model, feats, cfg_scale, detach_uncond=False):
    """The head on branch features (cB, N, D) -> guided logits (B, N, K) in float32,
    uncond + w * (cond - uncond) with CFG. shortcut.py calls it on predicted features.
    detach_uncond: the same value, but no gradient reaches the model through the null-prompt branch.
    (Back-propagating a log-prob of the guided policy through both branches trains the null prompt
    with coefficient -(w - 1): *away* from the tokens the reward likes. grpo.replay_logp detaches it.)"""
    with autocast(feats.device):
        logits = model.head(feats).float()
    if cfg_scale:
        cond, uncond = logits.chunk(2)
        uncond = uncond.detach() if detach_uncond else uncond
        return uncond + cfg_scale * (cond - uncond)
    return logits


def policy_logits(model, state, prompt_ids, cfg_scale, return_features=False, detach_uncond=False, sampling=False):
    """Guided logits (B, N, K) in float32 for one step, [and the conditional features (B, N, D)]."""
    feats = branch_features(model, state, prompt_ids, cfg_scale, sampling, detach_uncond)
    logits = guided_logits(model, feats, cfg_scale, detach_uncond)
    return (logits, feats[: state.shape[0]].float()) if return_features else logits


def gumbel(shape, generator, device):
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def check_sampling(prompt_ids, temperature):
    """Once per sampling call (sample, shortcut.sample_with_shortcut), before any work: prompt_ids as
    encode_prompts makes them, and a temperature above 0 (0 would turn the logits into nan and commit
    token 0 everywhere, silently)."""
    check_prompt_ids(prompt_ids)
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0 (try 1e-3 for near-greedy sampling), got {temperature}")


def sample_step(logits, state, mask_id, t, T, n_commit, mode, choice_temperature, generator,
                temperature=1.0, token_temperature=None, order=None):
    """One decoding step from guided logits (B, N, K). n_commit: how many tokens "confidence", "spread" and
    "halton" commit in every row (commit_counts(T, N)[t]; "stochastic" ignores it); order: "halton"'s (B, N) places
    (commit_order). Returns new state, committed, tokens, logp, entropy."""
    masked = state == mask_id  # (B, N)
    if token_temperature is not None:  # its entropy is the raw guided logits', before any temperature (MaskFocus)
        ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        logits = logits / token_temperature(logits, ent * masked, masked)[..., None]  # (B, N, 1)
    logits = logits / temperature
    logp_all = logits.log_softmax(-1)  # (B, N, K)
    tokens = (logp_all + gumbel(logp_all.shape, generator, logits.device)).argmax(-1)  # (B, N) ~ policy
    logp = logp_all.gather(-1, tokens[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1) * masked
    if mode == "stochastic":  # each masked position revealed with the schedule's probability
        k_now, k_next = math.cos(math.pi / 2 * t / T), math.cos(math.pi / 2 * (t + 1) / T)
        p = 1.0 if t == T - 1 else (k_now - k_next) / k_now
        committed = masked & (torch.rand(masked.shape, generator=generator, device=logits.device) < p)
    else:  # the n_commit masked positions that score highest
        if mode in ("confidence", "spread"):  # the most confident, with Gumbel noise annealed to zero
            conf = logp + choice_temperature * (1 - (t + 1) / T) * gumbel(logp.shape, generator, logits.device)
        elif mode == "halton" and order is not None:  # the earliest places in the fixed order
            conf = -order.float()
        else:
            raise ValueError(f"mode must be 'confidence', 'spread', 'halton' (with its commit_order) or "
                             f"'stochastic', got {mode!r}")
        conf = conf.masked_fill(~masked, -math.inf)  # known positions are never re-committed
        if mode == "spread":
            committed = spread_top(conf, logp > math.log(SURE), n_commit)
        else:
            committed = torch.zeros_like(masked).scatter_(1, conf.topk(n_commit, dim=1).indices, True)
    return torch.where(committed, tokens, state), committed, tokens, logp, entropy


@torch.no_grad()
def sample(model, prompt_ids, steps, cfg_scale=0.0, temperature=1.0, choice_temperature=4.5,
           mode="confidence", generator=None, record=False, token_temperature=None, record_features=False):
    """Generate (B, N) tokens for prompt_ids (B, L). record=True -> (tokens, Trajectory)."""
    check_sampling(prompt_ids, temperature)
    B, N = prompt_ids.shape[0], model.config.n_tokens
    dev = prompt_ids.device
    commits = commit_counts(steps, N)
    order = commit_order(mode, B, N, generator, dev)  # (B, N) for "halton", else None
    state = torch.full((B, N), model.mask_id, dtype=torch.long, device=dev)
    names = ["states", "committed", "tokens", "logp", "entropy", "x0"] + (["features"] if record_features else [])
    rec = {k: [] for k in names}
    with autocast(dev):  # one region for the whole loop: on CUDA, weights that require grad are cast to bf16 once
        for t in range(steps):
            logits, feats = policy_logits(model, state, prompt_ids, cfg_scale, return_features=True,
                                          sampling=True)
            new, committed, tokens, logp, entropy = sample_step(
                logits, state, model.mask_id, t, steps, commits[t], mode, choice_temperature, generator,
                temperature, token_temperature, order)
            if record:
                x0 = torch.where(state == model.mask_id, tokens, state)  # the step's guess of the clean image
                for k, v in zip(rec, (state, committed, tokens, logp, entropy, x0, feats)):
                    rec[k].append(v)
            state = new
    if not record:
        return state
    rec = {k: torch.stack(v) for k, v in rec.items()}
    feats = rec.pop("features", None)
    traj = Trajectory(**rec, features=feats, final=state, prompt_ids=prompt_ids, cfg_scale=cfg_scale,
                      temperature=temperature)
    return state, traj


if __name__ == "__main__":
    # python sample.py --prompt "two blue squares": samples of a finished run into a PNG and a GIF of the unmasking
    import os

    import bench
    import config
    import report
    import rewards
    import runs
    import world
    from model import encode_prompts

    ap = argparse.ArgumentParser(description="Sample from a run made by train.py: a PNG and a GIF, or images/s.")
    ap.add_argument("--ckpt", "--out", dest="ckpt", default="out", help="train.py's output folder")
    ap.add_argument("--prompt", default="a red circle left of a blue square")
    for name, kind, what in [("steps", int, "sampling steps T"), ("cfg-scale", float, "CFG scale"),
                             ("temperature", float, "")]:
        ap.add_argument(f"--{name}", type=kind, default=None, help=f"{what} (default: the run's)")
    ap.add_argument("--mode", default=None, choices=["confidence", "spread", "halton", "stochastic"],
                    help="commit order (default: the run's)")
    ap.add_argument("--n", type=int, default=8, help="samples to draw of --prompt")
    ap.add_argument("--bench", action="store_true", help="print images/s at --batch instead (bench.py)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--compile", action="store_true", help="the model's calls through torch.compile (CUDA graphs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    given = (("--temperature", "temperature", args.temperature), ("--cfg-scale", "cfg_scale", args.cfg_scale))
    for opt, field, v in given:
        if v is not None and (problem := config.out_of_range(field, v)):  # train.py's rule for the field
            ap.error(f"{opt} {problem}")
    if problem := world.prompt_error(args.prompt):
        ap.error(problem)
    model, vq, cfg = runs.load_generator(args.ckpt, dev := runs.pick_device(args.device))
    model.compile_sampling = args.compile
    T = cfg.sample_steps if args.steps is None else args.steps
    w = cfg.cfg_scale if args.cfg_scale is None else args.cfg_scale
    temperature = cfg.temperature if args.temperature is None else args.temperature
    if not 1 <= T <= model.config.n_tokens or min(args.n, args.batch) < 1:
        ap.error(f"--steps must be between 1 and the {model.config.n_tokens} image tokens, got {args.steps}; "
                 f"--n and --batch at least 1, got {args.n} and {args.batch}")
    kw = dict(temperature=temperature, choice_temperature=cfg.choice_temperature, mode=args.mode or cfg.order,
              generator=torch.Generator(dev).manual_seed(args.seed))
    if args.bench:
        ids = encode_prompts(world.sample_prompts(args.batch, torch.Generator().manual_seed(0))).to(dev)
        per_s, ms, ops = bench.sampler_speed(model, ids, T, w, dev, **kw)
        print(f"{dev.type}{' compiled' * args.compile}: batch {args.batch}, T={T}, cfg {w}: {per_s:,.1f} images/s "
              f"({ms:.2f} ms/image, median of 3 after a warm-up; {ops} aten ops per sampling call)")
    else:
        tokens, traj = sample(model, encode_prompts([args.prompt] * args.n).to(dev), T, w, record=True, **kw)
        prompts = [args.prompt] * args.n
        r = rewards.reward(images := vq.decode(tokens), prompts)
        report.save_grid(images, report.verdict_captions(prompts, r), os.path.join(args.ckpt, "sample.png"))
        report.save_gif(report.trajectory_frames(vq, traj), os.path.join(args.ckpt, "sample.gif"))
        print(f"accuracy {(r >= 1).float().mean():.0%} on {args.n} samples; wrote sample.png and sample.gif in "
              f"{args.ckpt}")
