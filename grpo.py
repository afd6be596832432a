"""
GRPO for a masked generator: the pieces of MaskGRPO (arXiv 2510.02880), each a plain
function another project can copy.

  group_advantages  z-score of rewards inside each group of G samples of one prompt
  object_advantages per-object credit (beyond the papers, off by default): a token of a blob or of an
                    object the prompt never names gets at most -GRPOConfig.blame, whatever its sample's advantage
  replay_logp       the exact policy log-prob: re-run the model on the recorded input state
                    of a step (with the sampler's CFG and temperature) and score the tokens
                    committed there; only CFG's conditional branch takes the gradient
  remask_logp       MaskFocus's estimator: a fresh uniformly random mask over the *final* tokens
                    with as many masked positions as the chosen step had, score every masked
                    token (conditional branch only, no CFG inside the likelihood)
  ratio_masks       MaskGRPO's own masks for remask_logp: no steps are chosen; inner iteration j
                    of mu masks every token i.i.d. with r_j = min(m + (1 - m)(j + 1)/mu, 0.999)
                    (estimator="maskgrpo")
  grpo_loss         clipped-ratio surrogate with a k3 KL to a frozen reference, pooled per token
                    (one mean over every scored token) or per step (MaskFocus: a token mean per
                    scored step, then the mean over steps)
  GRPOConfig        an update round's settings (group size, mu, estimator, clipping, KL weight, ...)
  rl_step           one update round: rollouts, rewards, advantages, old and reference log-probs, mu
                    clipped updates; focus.py chooses the steps and the tokens through two arguments,
                    data parallelism plugs in through one (train.py hands it dist.py)

What the policy gradient sees. With MaskGIT confidence rollouts (as MaskFocus; train.py's spread order
is the same with a step's uncertain tokens kept apart), a step samples a token at every masked position
and then keeps the most confident ones (a Gumbel top-k). Every estimator here scores the log-prob of
the *tokens*; *which positions* were committed is a second decision, and it gets no gradient.
MaskGRPO's stochastic sampler (mode="stochastic") reveals each position with a fixed probability,
independent of the tokens, so it has no such gap; so does the Halton order (mode="halton"), where
the positions are fixed before sampling.

Simplified versus the paper (honest list):
  - no LoRA: the whole (small) model is trained;
  - estimator="remask" is MaskFocus's, the mask count of a chosen sampling step, counted
    before the step (MaskFocus's code counts those still masked after it: at T=12 and 64 tokens, steps 1-4
    score 63, 61, 59, 55 positions here against its 61, 59, 55, 50), a fresh mask per sample (its code
    shares one);
    MaskGRPO's ratio schedule is estimator="maskgrpo", at its image settings mu = 6, m = 0.6
    (train.py uses them when that estimator is chosen without --rl-mu);
  - the loss on a masked position is plain log-prob, with no 1/t ELBO weighting (as the paper);
  - advantages use the unbiased group std (as both papers' code) with eps 1e-4 (MaskFocus;
    MaskGRPO uses 1e-5);
  - train.py's default is neither paper's: the replay estimator on 4 random steps, rollouts in the
    evaluation's spread order (sample.py), which measured better here (docs/FINDINGS.md, section 18);
    MaskGRPO's stochastic sampler is sample(mode="stochastic");
  - replay_logp detaches CFG's unconditional branch: the value is the guided policy's, but only the
    conditional branch learns (back-propagating through both would train the null prompt with
    coefficient -(w - 1), away from rewarded tokens); remask scores without CFG, as MaskGRPO.
"""

from dataclasses import dataclass

import torch

from sample import policy_logits, sample


def group_advantages(rewards, group_size, eps=1e-4):
    """rewards (B,), B = groups * group_size, samples of a prompt contiguous ->
    (advantages (B,), fraction of groups whose rewards are all equal: their advantage is 0).
    A = (r - mean_G) / (std_G + eps) with the unbiased std (torch's default, as both papers' code)."""
    if group_size < 2 or rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size={group_size} (at least 2: "
                         f"advantages compare a group), got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)  # (groups, G)
    mean, std = r.mean(1, keepdim=True), r.std(1, keepdim=True)
    flat = (r.max(1).values - r.min(1).values) == 0  # (groups,)
    adv = torch.where(flat[:, None], torch.zeros_like(r), (r - mean) / (std + eps))
    return adv.view(-1), flat.float().mean().item()


def object_advantages(advantages, blamed, floor=1.0):
    """Per-object credit, beyond all four papers (their advantage is one number per image): advantages (B,) and
    blamed (B, N) bool (rewards.blamed_tokens: the tokens of a blob or of an object the prompt never names) ->
    (B, N), each sample's own advantage on its tokens but at most -floor (a group std) on the blamed ones. So a
    blob is never reinforced in a sample that beats its group, and is pushed down where every sample of the
    group scored alike (their advantage is 0): a group's advantages no longer sum to zero."""
    if blamed.shape[0] != advantages.shape[0] or blamed.ndim != 2:
        raise ValueError(f"blamed must be (B, N) with B = {advantages.shape[0]}, got {tuple(blamed.shape)}")
    A = advantages[:, None].expand(blamed.shape)
    return torch.where(blamed, A.clamp(max=-floor), A)


def step_index(steps, B, device):
    """The scored steps as a (B, S) long tensor: a list of S steps is shared by every sample; a (B, S)
    tensor gives each sample its own (focus.py's per-sample critical steps)."""
    idx = torch.as_tensor(steps, dtype=torch.long, device=device)
    return idx.expand(B, -1) if idx.ndim == 1 else idx


def at_steps(x, idx):
    """x (T, B, ...) recorded per step, idx (B, S) -> (B, S, ...): each sample's entries at its steps."""
    return x[idx, torch.arange(idx.shape[0], device=idx.device)[:, None]]


def replay_logp(model, traj, steps):
    """Log-probs of the tokens committed at each chosen step under the current model's sampling policy.
    steps: a list, or (B, S) per sample -> logp (B, S, N) and mask (B, S, N) bool (the committed positions).
    The value is the sampler's guided policy; the gradient flows through the conditional branch only."""
    idx = step_index(steps, traj.final.shape[0], traj.final.device)  # (B, S)
    states, tokens = at_steps(traj.states, idx), at_steps(traj.tokens, idx)  # (B, S, N)
    out = []
    for s in range(idx.shape[1]):
        logits = policy_logits(model, states[:, s], traj.prompt_ids, traj.cfg_scale, detach_uncond=True)
        logits = logits / traj.temperature
        out.append(logits.log_softmax(-1).gather(-1, tokens[:, s, :, None])[..., 0])  # (B, N)
    return torch.stack(out, 1), at_steps(traj.committed, idx)


def remask_masks(traj, steps, mask_id, generator):
    """(B, S, N) bool: for each chosen step, a uniformly random set of positions of the same size as
    that step's masked set. Draw once, reuse for old, reference and current log-probs."""
    B, N = traj.final.shape
    idx = step_index(steps, B, traj.final.device)  # (B, S)
    n_masked = (at_steps(traj.states, idx) == mask_id).sum(-1)  # (B, S)
    rank = torch.rand(idx.shape[1], B, N, generator=generator, device=traj.final.device).argsort(-1).argsort(-1)
    return rank.transpose(0, 1) < n_masked[..., None]  # (B, S, N)


def ratio_masks(B, N, mu, generator, device, mask_floor=0.5):
    """(B, mu, N) bool, MaskGRPO's likelihood masks: in inner iteration j every image token is masked
    i.i.d. with probability r_j = min(m + (1 - m)(j + 1)/mu, 0.999), m = mask_floor. With mu = 1 that is 0.999:
    nearly the empty board, where each sample's first decisions are made. Draw once, reuse for old,
    reference and current log-probs (iteration j scores mask j only)."""
    m = mask_floor
    r = torch.tensor([min(m + (1 - m) * (j + 1) / mu, 0.999) for j in range(mu)], device=device)
    return torch.rand(B, mu, N, generator=generator, device=device) < r[:, None]


def remask_logp(model, final, prompt_ids, masks, mask_id):
    """Log-prob (B, S, N) of the final token at every position, with masks (B, S, N) applied to the
    final tokens; only the masked entries are meaningful (use masks as the loss mask)."""
    out = []
    for s in range(masks.shape[1]):
        inp = torch.where(masks[:, s], torch.full_like(final, mask_id), final)
        logits = policy_logits(model, inp, prompt_ids, 0.0)  # no CFG inside the likelihood
        out.append(logits.log_softmax(-1).gather(-1, final[..., None])[..., 0])
    return torch.stack(out, 1)


def same_shape(what, *xs):
    """The one shape the tensors xs share (None entries skipped); a ValueError naming `what` when they differ:
    broadcasting would pair the wrong entries without a word ((B, N) against (B, S, N) with B == S)."""
    shapes = [tuple(x.shape) for x in xs if x is not None]
    if len(set(shapes)) > 1:
        raise ValueError(f"{what} must share one shape, got {shapes}")
    return shapes[0]


def pool_weights(mask, pool="token", total=lambda n: n):
    """The pooling as weights (B, S, N) (or (B, N)) summing to 1 over the scored entries of `mask`: a pooled mean
    is (x * weights).sum(), and a micro-batch's part of it the sum over its rows (gradient accumulation stays
    exact). "token": one mean over every masked entry; "step": MaskFocus's, a mean over each scored step s (x[:, s],
    all samples), then over the steps that score anything (MaskFocus sums them: a factor S). total(counts): their
    sum over data-parallel ranks (dist.total), so all ranks' weights together pool the global batch."""
    mask = mask.float()
    if pool == "token" or mask.ndim == 2:
        return mask / total(mask.sum()).clamp(min=1)
    if pool != "step":
        raise ValueError(f"pool must be 'token' or 'step', got {pool!r}")
    n = total(mask.sum((0, 2), keepdim=True))  # (1, S, 1) tokens scored at each step slot
    return mask / n.clamp(min=1) / (n > 0).sum().clamp(min=1)


def pool_mean(x, mask, pool="token"):
    """Mean of x over `mask`, both (B, S, N) or (B, N), pooled as pool_weights says."""
    return (x * pool_weights(mask, pool)).sum()


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, weights=None, clip_eps=0.2, beta=0.01, pool="token",
              share=None):
    """Per token: -min(rho A, clip(rho, 1-eps, 1+eps) A) * w + beta * (exp(ref - logp) - (ref - logp) - 1),
    rho = exp(logp - old_logp); averaged over `mask` by pool_mean (pool "token": the token-level mean;
    "step": a token mean per scored step, then the mean over steps).
    logp, old_logp, ref_logp, mask, weights: (B, S, N) or (B, N); advantages: (B,), or (B, N) per token
    (object_advantages). share: for a micro-batch, these rows of the whole batch's pool_weights (then the loss is
    this micro-batch's part of the whole mean)."""
    shape = same_shape("logp, old_logp, ref_logp, mask (and weights, share)", logp, old_logp, ref_logp, mask, weights,
                       share)
    if tuple(advantages.shape) not in (shape[:1], (shape[0], shape[-1])):
        raise ValueError(f"logp is {shape}, so advantages must be (B,) = {shape[:1]} or (B, N) = "
                         f"{(shape[0], shape[-1])}, got {tuple(advantages.shape)}")
    mask = mask.float()
    A = advantages if advantages.ndim == 2 else advantages[:, None]  # (B, N), or (B, 1): over the tokens
    A = A[:, None] if logp.ndim == 3 else A  # and over the steps
    rho = torch.exp(logp - old_logp)
    surrogate = -torch.minimum(rho * A, rho.clamp(1 - clip_eps, 1 + clip_eps) * A)
    surrogate = surrogate if weights is None else surrogate * weights
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1  # k3 estimator, >= 0
    loss = ((surrogate + beta * kl) * (pool_weights(mask, pool) if share is None else share)).sum()
    with torch.no_grad():  # the logged means are per token, whatever the pooling
        clipped = ((rho - 1).abs() > clip_eps).float()
        stats = dict(kl=pool_mean(kl, mask).item(), clip_ratio=pool_mean(clipped, mask).item(),
                     ratio=pool_mean(rho, mask).item())
    return loss, stats


def choose_steps(T, score_steps, generator):
    """Which sampling steps the loss scores: "all" T, or an int k: k of them at random (sorted).
    (focus.py passes its critical steps to rl_step as a callable instead.)"""
    if score_steps == "all":
        return list(range(T))
    if isinstance(score_steps, int) and 1 <= score_steps <= T:
        dev = generator.device if generator is not None else "cpu"  # a CUDA generator draws on the GPU
        return sorted(torch.randperm(T, generator=generator, device=dev)[:score_steps].tolist())
    raise ValueError(f"score_steps must be 'all', a number of steps in [1, {T}] or a callable, got {score_steps!r}")


def policy_logp(model, traj, steps, estimator, masks):
    """(logp, loss mask), both (B, S, N), by the chosen estimator."""
    if estimator == "replay":
        return replay_logp(model, traj, steps)
    if estimator in ("remask", "maskgrpo"):
        return remask_logp(model, traj.final, traj.prompt_ids, masks, model.mask_id), masks
    raise ValueError(f"estimator must be 'replay', 'remask' or 'maskgrpo', got {estimator!r}")


@dataclass
class GRPOConfig:
    """The settings of one update round (TRL's GRPOConfig names where it has them)."""
    group_size: int = 8  # G: samples per prompt, whose rewards the advantages compare
    mu: int = 1  # inner updates on one batch of rollouts (TRL: num_iterations; MaskGRPO: 6 for images)
    estimator: str = "remask"  # replay | remask | maskgrpo (policy_logp; maskgrpo: ratio_masks, no steps chosen)
    mask_floor: float = 0.6  # maskgrpo: m in r_j = min(m + (1 - m)(j + 1)/mu, 0.999)
    clip_eps: float = 0.2  # TRL: epsilon
    beta: float = 0.01  # the k3 KL's weight
    pool: str = "token"  # grpo_loss's pooling: token | step (MaskFocus)
    max_grad_norm: float = 1.0
    blame: float = 1.0  # per-object credit (a score that also returns blamed tokens): their advantage <= -blame
    micro_batch: int = 0  # rollouts per forward and backward, the gradient accumulated (0: all at once; same update)


class OneProcess:
    """rl_step's `parallel` hook when there is one process. Under torchrun dist.py is the hook, with the same two
    functions: total(count) sums it over the ranks; sync_grads(params, finite) averages the gradients over them
    and says whether every rank's loss was finite."""
    total = staticmethod(lambda x: x)
    sync_grads = staticmethod(lambda params, finite=True: finite)


def rl_step(model, ref_model, opt, prompt_ids, score, sample_kwargs, conf=GRPOConfig(), score_steps="all",
            tokens=None, generator=None, parallel=OneProcess):
    """One GRPO update round: rollouts, rewards, advantages, old and reference log-probs, conf.mu clipped updates.

    prompt_ids (P, L); score(tokens (B, N)) -> rewards (B,), or (rewards, blamed (B, N) bool) for per-object
    credit (object_advantages, at conf.blame); sample_kwargs go to sample() (steps, cfg_scale,
    temperature, mode, token_temperature). score_steps: "all", a number k (k random steps), or a callable
    traj -> a list of steps or a (B, S) tensor of steps per sample (focus.focus_steps); estimator "maskgrpo"
    chooses none (its mu masks take their place). tokens: None, or focus.gcpo_hooks' (pick_tokens, weigh_tokens):
    pick_tokens(traj) -> (B, N) bool restricts the loss to those positions; weigh_tokens(logp, ref, mask, traj)
    -> weights (B, S, N) for grpo_loss, given every scored position (before pick_tokens, as GCPO weighs before
    its loss mask). parallel: data parallelism's hook (OneProcess; dist.py under torchrun), so every rank pools
    the global batch and the ranks' gradients are averaged before each step.
    Returns a dict of numbers to log (train.rl_update adds the compute they cost)."""
    ids = prompt_ids.repeat_interleave(conf.group_size, 0)  # (P*G, L): a prompt's samples are contiguous
    model.eval()
    final, traj = sample(model, ids, generator=generator, record=True, **sample_kwargs)
    out = score(final)
    r, blamed = out if isinstance(out, tuple) else (out, None)
    r = r.to(final.device)  # (B,)
    adv, flat = group_advantages(r, conf.group_size)
    if blamed is not None:  # per-object credit: (B,) -> (B, N)
        adv = object_advantages(adv, blamed.to(final.device), conf.blame)
    B, N = final.shape
    if conf.estimator == "maskgrpo":
        chosen, masks = None, ratio_masks(B, N, conf.mu, generator, final.device, conf.mask_floor)  # (B, mu, N)
    else:
        T = traj.states.shape[0]
        chosen = score_steps(traj) if callable(score_steps) else choose_steps(T, score_steps, generator)
        chosen = step_index(chosen, B, final.device)  # (B, S): shared or per-sample steps alike
        masks = remask_masks(traj, chosen, model.mask_id, generator) if conf.estimator == "remask" else None
    with torch.no_grad():  # the rollout policy and the frozen reference, on the same masks
        if conf.estimator == "replay":  # the sampler already recorded the rollout policy's log-probs
            old, mask = at_steps(traj.logp, chosen), at_steps(traj.committed, chosen)
        else:
            old, mask = policy_logp(model, traj, chosen, conf.estimator, masks)
        ref, _ = policy_logp(ref_model, traj, chosen, conf.estimator, masks)
    pick_tokens, weigh_tokens = tokens or (None, None)
    weights = weigh_tokens(old, ref, mask, traj) if weigh_tokens is not None else None  # over every scored token
    mask = mask if pick_tokens is None else mask & pick_tokens(traj)[:, None]  # (B, S, N): the chosen positions
    model.train()  # below: stats NaN if every inner update is skipped
    stats = dict.fromkeys(("kl", "clip_ratio", "ratio", "grad_norm"), float("nan"))
    skipped, micro = 0, conf.micro_batch or B
    ranks = parallel.total(torch.ones((), device=mask.device))  # gradients are averaged: a loss counts x ranks
    for j in range(conf.mu):
        part = slice(j, j + 1) if conf.estimator == "maskgrpo" else slice(None)  # MaskGRPO: iteration j, mask j
        share = pool_weights(mask[:, part], conf.pool, parallel.total) * ranks  # the global batch's pooling
        opt.zero_grad(set_to_none=True)
        acc, finite = {}, True
        for rows in (slice(i, i + micro) for i in range(0, B, micro)):  # gradient accumulation over micro-batches
            m, w = (None if x is None else x[rows, part] for x in (masks, weights))
            logp, _ = policy_logp(model, traj.rows(rows), None if chosen is None else chosen[rows], conf.estimator,
                                  m)
            loss, st = grpo_loss(logp, old[rows, part], ref[rows, part], adv[rows], mask[rows, part], w,
                                 conf.clip_eps, conf.beta, conf.pool, share[rows])
            if not torch.isfinite(loss):
                finite = False  # a non-finite loss never reaches the weights
                break
            loss.backward()
            rows_part = (mask[rows, part].sum() / mask[:, part].sum().clamp(min=1)).item()
            for name, v in st.items():  # per-token means of the micro-batch -> of the batch
                acc[name] = acc.get(name, 0.0) + v * rows_part
        finite = parallel.sync_grads(model.parameters(), finite)
        if not finite:
            skipped += 1
            continue
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), conf.max_grad_norm)  # before clipping
        stats = dict(acc, grad_norm=norm.item())
        opt.step()
    model.eval()
    entropy = (traj.entropy * traj.committed).sum() / traj.committed.sum()  # the rollout policy, per committed token
    # named as TRL's GRPOTrainer logs them where it has a name: reward, reward_std (the mean within-group std),
    # frac_reward_zero_std, kl, clip_ratio, entropy, grad_norm (the last inner update's, before clipping)
    return dict(reward=r.mean().item(), reward_std=r.view(-1, conf.group_size).std(1).mean().item(),
                frac_reward_zero_std=flat, accuracy=(r >= 1).float().mean().item(), entropy=entropy.item(),
                skipped=skipped, scored_steps=mask.shape[1], scored_tokens=mask.float().sum().item() / mask.shape[0],
                **stats, **({} if blamed is None else dict(blamed=blamed.float().mean().item())))


if __name__ == "__main__":
    # python grpo.py --ckpt out: a few GRPO updates on a finished run, against its pretrained weights as reference
    import argparse
    import rewards
    import runs
    import world
    from model import encode_prompts

    ap = argparse.ArgumentParser(description="A few GRPO updates on a checkpoint made by train.py; prints the reward.")
    ap.add_argument("--ckpt", "--out", dest="ckpt", default="out", help="train.py's output folder")
    for name, kind, default in [("updates", int, 20), ("prompts", int, 8), ("group", int, 8), ("lr", float, 1e-4)]:
        ap.add_argument(f"--{name}", type=kind, default=default)
    ap.add_argument("--estimator", default=None, choices=["remask", "replay", "maskgrpo"], help="default: the run's")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    if min(args.updates, args.prompts) < 1 or args.group < 2:
        ap.error("--updates and --prompts must be at least 1 and --group at least 2 (advantages compare a group)")
    model, vq, cfg = runs.load_generator(args.ckpt, dev := runs.pick_device(args.device))
    ref = runs.load_generator(args.ckpt, dev, pretrained=True)[0].requires_grad_(False)  # the KL reference
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g, g_prompts = torch.Generator(dev).manual_seed(0), torch.Generator().manual_seed(0)
    kw = dict(steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
              choice_temperature=cfg.choice_temperature, mode=cfg.rl_mode)
    for u in range(args.updates):
        prompts = [p for p in world.sample_prompts(args.prompts, g_prompts) for _ in range(args.group)]
        score = lambda tok: rewards.reward(vq.decode(tok).cpu(), prompts)
        s = rl_step(model, ref, opt, encode_prompts(prompts[::args.group]).to(dev), score, kw,
                    GRPOConfig(group_size=args.group, estimator=args.estimator or cfg.rl_estimator),
                    score_steps="all" if cfg.rl_steps == "all" else cfg.rl_k, generator=g)  # focus: k random here
        print(f"update {u}: reward {s['reward']:.3f} acc {s['accuracy']:.2f} kl {s['kl']:.4f} "
              f"clip {s['clip_ratio']:.2f} zero-std {s['frac_reward_zero_std']:.2f}")
