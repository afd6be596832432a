"""
The whole story, end to end, writing out/:

  data -> codebook -> pretrain -> evaluate -> rl -> evaluate [-> sweep] -> shortcut

    python train.py                   # GPU preset if CUDA is there, else the CPU preset (it says which)
    python train.py --preset tiny     # the smoke run the tests use (seconds on a CPU)
    python train.py --sweep-steps 4,8,12,32   # also the parallelism table: both models at each step count
    python train.py --rl-lr 3e-5      # any Config field (config.py) is a flag; --fresh redoes stages
    torchrun --standalone --nproc_per_node=2 train.py   # data parallel over 2 processes (dist.py)

Each stage saves an atomic checkpoint out/<stage>.pt holding the settings it depends on; a rerun
skips stages whose checkpoint matches. Outputs: out/report.md (every table), out/metrics.jsonl,
sample grids with verdicts before and after RL, out/trajectory.gif and out/rl_reward.png.
focus.py's comparison of RL variants is compare.py: the same stages, then every variant x 3 seeds.
"""

import copy
import dataclasses
import math
import os
import time

import torch
from tqdm import tqdm

import bench
import dist
import focus
import grpo
import report
import rewards
import shortcut
import world
from config import model_config, parse_config, sweep_list, sweep_orders
from runs import (drop_progress, load_progress, load_stage, make_out, pick_device, restore, save_progress, save_stage,
                  snapshot, state_dict)
from model import MaskedTransformer, VQCodebook, autocast, encode_prompts, maskgit_loss, maskgit_masks
from sample import sample


# ---- Stages

def stage_data(cfg):
    """The codebook's fitting scenes and the fixed evaluation set (prompts and reference renders)."""
    if (ck := load_stage(cfg, "data")) is not None:
        return ck
    g = torch.Generator().manual_seed(cfg.seed)
    fit = world.render(world.sample_prompts(cfg.fit_images, g), cfg.image_size, g, grid=cfg.grid)
    per_cat = cfg.eval_prompts // 4
    prompts = [p for c in world.CATEGORIES for p in world.sample_prompts(per_cat, g, [c])]
    eval_prompts = [p for p in prompts for _ in range(cfg.eval_samples)]
    ref = world.render(eval_prompts, cfg.image_size, g, grid=cfg.grid)  # what the quality metric compares with
    to_u8 = lambda x: (x * 255).round().byte()
    return save_stage(cfg, "data", dict(fit=to_u8(fit), eval_prompts=eval_prompts, eval_ref=to_u8(ref)))


def stage_codebook(cfg, data):
    """-> (the VQ codebook, its reconstruction MSE on the evaluation set's reference images)."""
    if (ck := load_stage(cfg, "codebook")) is not None:
        vq = VQCodebook(cfg.codebook_size, cfg.patch)
        vq.load_state_dict(ck["state"])
        return vq, ck["mse"]
    t0 = time.time()
    vq = VQCodebook.fit(data["fit"].float() / 255, cfg.codebook_size, cfg.patch,
                        torch.Generator().manual_seed(cfg.seed + 1), progress=True)
    dist.broadcast(vq)  # torchrun: rank 0's codebook everywhere
    ref = data["eval_ref"].float() / 255
    mse = ((vq.decode(vq.encode(ref)) - ref) ** 2).mean().item()
    print(f"[codebook] K={cfg.codebook_size} fitted in {time.time() - t0:.1f}s, VQ MSE {report.mse_text(mse)}")
    save_stage(cfg, "codebook", dict(state=vq.state_dict(), mse=mse))
    return vq, mse


def cosine(peak, done):
    """A cosine from peak (done = 0) down to 0 (done = 1)."""
    return peak * 0.5 * (1 + math.cos(math.pi * done))


def lr_at(step, cfg, total):
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cosine(cfg.lr, (step - cfg.warmup) / max(1, total - cfg.warmup))


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


def pretrain_step(cfg, model, opt, tokens, prompt_ids, masks, step):
    """One AdamW step on the MaskGIT loss of this rank's share of the batch -> the loss. Under torchrun the loss
    is normalised by the global batch's masked tokens and the gradients averaged over the ranks (dist.py): every
    rank takes the step one process would take on the whole batch. model may be torch.compile's wrapper."""
    set_lr(opt, lr_at(step, cfg, cfg.pretrain_steps))
    norm = None if dist.world() == 1 else dist.total(masks[0].sum().float()) / dist.world()
    with autocast(tokens.device):
        loss = maskgit_loss(model, tokens, prompt_ids, masks=masks, normalizer=norm)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.sync_grads(model.parameters())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()


def stage_pretrain(cfg, vq, dev):
    torch.manual_seed(cfg.seed)  # the weight init
    model = MaskedTransformer(model_config(cfg)).to(dev)
    model.compile_sampling = cfg.compile  # copies made later (RL's reference, the comparison's) inherit it
    if (ck := load_stage(cfg, "pretrain")) is not None:
        model.load_state_dict(ck["state"])
        return model, ck
    dist.broadcast(model)  # torchrun: one init on every rank
    n_params = sum(p.numel() for p in model.parameters())
    W = dist.world()
    B = cfg.batch_size // W  # this process's share of the batch
    print(f"[pretrain] {n_params / 1e6:.2f}M parameters, {cfg.pretrain_steps} steps of batch {cfg.batch_size} on {dev}"
          + (f" ({B} on each of {W} processes)" if W > 1 else ""))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    step_model = torch.compile(model) if cfg.compile else model  # the same weights; checkpoints save plain keys
    g_data = torch.Generator().manual_seed(dist.seed(cfg.seed + 2))  # scenes (CPU), each rank its own
    g_mask = torch.Generator(dev).manual_seed(dist.seed(cfg.seed + 3))  # masks, prompt drop (device)
    start, losses, pending, t0 = 0, [], [], time.time()
    if (snap := load_progress(cfg, "pretrain")) is not None:  # a crashed run: go on exactly where it stopped
        start, losses, t0 = snap["done"], snap["losses"], t0 - snap["seconds"]
        restore(snap, model=model, opt=opt, g_data=g_data, g_mask=g_mask)
    t_snap = time.time()
    bar = tqdm(range(start, cfg.pretrain_steps), desc="pretrain", initial=start, total=cfg.pretrain_steps)
    for step in bar:
        prompts = world.sample_prompts(B, g_data)
        tokens = vq.encode(world.render(prompts, cfg.image_size, g_data, grid=cfg.grid, device=dev))
        masks = maskgit_masks(B, cfg.n_tokens, g_mask, dev, cfg.prompt_drop)
        loss = pretrain_step(cfg, step_model, opt, tokens, encode_prompts(prompts).to(dev), masks, step)
        pending.append(dist.total(loss) / W)  # the global batch's mean, left on the device (read back below)
        log = step % 50 == 0 or step == cfg.pretrain_steps - 1
        snap_due = time.time() - t_snap >= cfg.snapshot_secs
        if log or snap_due:  # one read-back per 50 steps: the CPU places the next scenes during the backward
            losses += torch.stack(pending).tolist()
            pending = []
        if log:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
            report.log_metrics(cfg, stage="pretrain", step=step, loss=losses[-1], seconds=round(time.time() - t0, 1))
        if snap_due and step + 1 < cfg.pretrain_steps:
            save_progress(cfg, "pretrain", step + 1, "steps", losses=losses, seconds=time.time() - t0,
                          **snapshot(model=model, opt=opt, g_data=g_data, g_mask=g_mask))
            t_snap = time.time()
    seconds = time.time() - t0
    ck = save_stage(cfg, "pretrain", dict(state=state_dict(model), params=n_params, seconds=seconds,
                                          first_loss=sum(losses[:20]) / len(losses[:20]),
                                          last_loss=sum(losses[-50:]) / len(losses[-50:])))
    drop_progress(cfg, "pretrain")
    return model, ck


@torch.no_grad()
def generate(cfg, model, vq, prompts, dev, seed):
    """Sample images for a list of prompts in batches, in cfg's commit order (CPU tensor (B, 3, H, W))."""
    model.eval()
    g = torch.Generator(dev).manual_seed(dist.seed(seed))
    mine = prompts[dist.share(len(prompts))]  # torchrun: this rank's share, gathered below
    out = []
    for i in tqdm(range(0, len(mine), cfg.eval_batch), desc="sample", leave=False):
        ids = encode_prompts(mine[i:i + cfg.eval_batch]).to(dev)
        tok = sample(model, ids, cfg.sample_steps, cfg.cfg_scale, cfg.temperature, cfg.choice_temperature,
                     mode=cfg.order, generator=g)
        out.append(vq.decode(tok).cpu())
    return dist.gather(torch.cat(out))


def evaluate(cfg, model, vq, data, dev):
    """The fixed evaluation set sampled at cfg's settings (same seed every time) and scored:
    (images, rewards (B,), accuracy overall and per category, quality FD, why samples fail: shares overall and
    per category, rewards.failure_report)."""
    prompts = data["eval_prompts"]
    images = generate(cfg, model, vq, prompts, dev, seed=cfg.seed + 100)
    r = rewards.reward(images, prompts)
    fails = rewards.failure_report(rewards.failure_modes(images, prompts), prompts, rewards.mismatched_parts(images))
    return (images, r, rewards.accuracy_report(r, prompts), rewards.quality(images, data["eval_ref"].float() / 255),
            fails)


def stage_evaluate(cfg, name, model, vq, data, dev):
    """Accuracy overall and per category, the quality metric, and why samples fail, on the evaluation set."""
    if (ck := load_stage(cfg, name)) is not None:
        return ck
    t0 = time.time()
    prompts = data["eval_prompts"]
    images, r, acc, fd, failures = evaluate(cfg, model, vq, data, dev)
    seconds = time.time() - t0
    print(f"[{name}] accuracy {acc['overall']:.1%} "
          + " ".join(f"{c} {acc[c]:.1%}" for c in world.CATEGORIES) + f", quality FD {fd:.3f} ({seconds:.0f}s)")
    report.log_metrics(cfg, stage=name, **acc, quality=fd, reward=r.mean().item(), seconds=round(seconds, 1))
    # a grid: the first sample of 4 prompts per category, each with its verdict
    per = cfg.eval_samples * (cfg.eval_prompts // 4)
    pick = [c * per + j * cfg.eval_samples for c in range(4) for j in range(min(4, cfg.eval_prompts // 4))]
    report.save_grid(images[pick], report.verdict_captions([prompts[i] for i in pick], r[pick]),
                      os.path.join(cfg.out, f"samples_{name.split('_', 1)[1]}.png"))
    return save_stage(cfg, name, dict(accuracy=acc, quality=fd, reward=r.mean().item(), seconds=seconds,
                                      rewards=r, failures=failures, n=len(prompts)))


def stage_sweep(cfg, models, vq, data, dev):
    """The parallelism table: the evaluation (same prompts, same seed) at each step count of --sweep-steps,
    for each of `models` (name -> model), in the evaluation's commit order, MaskGIT's confidence and Halton's
    (config.sweep_orders). Fewer steps commit more tokens per step: MaskGIT's speed-quality trade-off, whether RL moves
    it, and whether keeping a step's tokens apart (spread, Halton) makes fewer objects of mismatched parts."""
    if (ck := load_stage(cfg, "sweep")) is not None:
        return ck
    rows = []
    for name, model in models.items():
        for order in sweep_orders(cfg):
            for T in tqdm(sweep_list(cfg.sweep_steps), desc=f"sweep {name}, {order}", leave=False):
                t0 = time.time()
                at = dataclasses.replace(cfg, sample_steps=T, order=order)
                _, _, acc, fd, failures = evaluate(at, model, vq, data, dev)
                rows.append(dict(model=name, order=order, steps=T, tokens_per_step=cfg.n_tokens / T, accuracy=acc,
                                 quality=fd, failures=failures["overall"], seconds=time.time() - t0))
                print(f"[sweep] {name}, {order} T={T}: accuracy {acc['overall']:.1%}, quality FD {fd:.3f}")
                report.log_metrics(cfg, stage="sweep", **rows[-1])
    return save_stage(cfg, "sweep", dict(rows=rows))


def rl_update(cfg, model, ref, opt, vq, g_prompts, g, steps, tokens, routing):
    """One grpo.rl_step on fresh grammar prompts, with focus.py's three switches: which steps are scored
    (all | random | focus), which tokens (all | GCPO's critical), and MaskFocus's entropy routing (off |
    entropy). The reward is the verifier on decoded images (the codebook stays on the CPU:
    VQCodebook.encode/decode bring its codes to the tokens' device)."""
    prompts = world.sample_prompts(cfg.rl_prompts // dist.world(), g_prompts)  # torchrun: this rank's share
    flat_prompts = [p for p in prompts for _ in range(cfg.group_size)]
    def score(tok):  # rewards (B,); with per-object credit also the blamed tokens (B, N)
        images = vq.decode(tok).cpu()
        r = rewards.reward(images, flat_prompts)
        r = (r >= 1).float() if cfg.rl_reward == "exact" else r  # (then the logged rollout reward is accuracy)
        if cfg.rl_credit == "sample":
            return r
        return r, rewards.blamed_tokens(images, flat_prompts, cfg.image_size // cfg.patch)
    dev = next(model.parameters()).device
    kw = dict(steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
              choice_temperature=cfg.choice_temperature, mode=cfg.rl_mode)
    if routing == "entropy":  # MaskFocus: confident samples explore at a higher per-token temperature
        kw["token_temperature"] = focus.entropy_temperature
    if steps == "focus":  # MaskFocus: the k steps of largest information gain
        steps = focus.focus_steps(vq.codes, cfg.rl_k, cfg.rl_per_sample)
    elif steps == "random":
        steps = cfg.rl_k
    conf = grpo.GRPOConfig(group_size=cfg.group_size, mu=cfg.rl_mu, estimator=cfg.rl_estimator,
                           mask_floor=cfg.rl_mask_floor, clip_eps=cfg.clip_eps, beta=cfg.beta, pool=cfg.rl_pool,
                           micro_batch=cfg.rl_micro_batch, blame=cfg.rl_blame)
    hooks = focus.gcpo_hooks(cfg.group_size, vq.codes) if tokens == "critical" else None
    s = grpo.rl_step(model, ref, opt, encode_prompts(prompts).to(dev), score, kw, conf, score_steps=steps,
                     tokens=hooks, generator=g, parallel=dist)
    s.update(rl_compute(cfg, s["scored_steps"]))
    s = dist.mean_numbers(s)  # torchrun: the ranks' numbers as one
    if s["skipped"]:  # the weights were left alone; say so (the RL stage and the comparison alike)
        tqdm.write(f"[rl] {s['skipped']} of {cfg.rl_mu} inner updates skipped: the loss was not finite")
    return s


def rl_compute(cfg, S):
    """What an update cost, in batch forward-equivalents (a backward counts 2): the rollout (x2 with CFG), then per
    scored step (S of them) the old policy (not replay: the sampler recorded it), the reference and mu x (forward +
    backward); MaskGRPO's mu masks instead of steps. Replay scores the sampler's guided policy: the reference runs both
    CFG branches, each inner update the null one without a graph and the conditional one forward and backward."""
    c = 2 if cfg.cfg_scale else 1
    if cfg.rl_estimator == "replay":
        score_fwd = S * (c + (c + 2) * cfg.rl_mu)
    else:  # remask has no CFG inside its likelihood
        score_fwd = 5 * cfg.rl_mu if cfg.rl_estimator == "maskgrpo" else S * (2 + 3 * cfg.rl_mu)
    return dict(rollout_fwd=cfg.sample_steps * c, score_fwd=score_fwd)


def rl_lr_at(update, cfg, total):
    """RL's learning rate at an update: constant (MaskGRPO, MaskFocus) or a cosine from rl_lr to 0 over the updates."""
    return cfg.rl_lr if cfg.rl_schedule == "constant" else cosine(cfg.rl_lr, update / total)


def rl_setup(cfg, model, dev, seed):
    ref = copy.deepcopy(model).eval().requires_grad_(False)  # the frozen pretrained weights: the KL reference
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.rl_lr, betas=(0.9, 0.95), weight_decay=0.0)
    seed = dist.seed(seed)  # torchrun: each rank its own prompts and rollouts
    return ref, opt, torch.Generator().manual_seed(seed), torch.Generator(dev).manual_seed(seed + 1)


def held_out_accuracy(cfg, model, vq, prompts, dev):
    """Accuracy of one sample per prompt (the evaluation's sampler and seed): RL's curves."""
    return (rewards.reward(generate(cfg, model, vq, prompts, dev, cfg.seed + 100), prompts) >= 1).float().mean().item()


def stage_rl(cfg, model, vq, data, dev):
    """GRPO from the pretrained weights against a frozen copy of them (the KL reference).
    Every rl_eval_every updates, held-out accuracy on compare_eval_prompts prompts (its own generator:
    the RL result is the same with or without it)."""
    if (ck := load_stage(cfg, "rl")) is not None:
        model.load_state_dict(ck["state"])
        return model, ck
    ref, opt, g_prompts, g = rl_setup(cfg, model, dev, cfg.seed + 4)  # ref: the pretrained weights
    held = held_out_prompts(cfg, data)
    start, log, t0, eval_seconds = 0, [], time.time(), 0.0
    if (snap := load_progress(cfg, "rl")) is not None:  # a crashed run: go on exactly where it stopped
        start, log, curve, eval_seconds = snap["done"], snap["log"], snap["curve"], snap["eval_seconds"]
        t0 -= snap["seconds"]
        restore(snap, model=model, opt=opt, g_prompts=g_prompts, g=g)
    else:  # the curve's first point: like every held-out evaluation, not RL's time
        curve = [(0, held_out_accuracy(cfg, model, vq, held, dev))] if cfg.rl_eval_every else []
        eval_seconds = time.time() - t0
    t_snap = time.time()
    bar = tqdm(range(start, cfg.rl_updates), desc="rl", initial=start, total=cfg.rl_updates)
    for u in bar:
        set_lr(opt, rl_lr_at(u, cfg, cfg.rl_updates))
        s = rl_update(cfg, model, ref, opt, vq, g_prompts, g, cfg.rl_steps, cfg.rl_tokens, cfg.rl_routing)
        s = dict(update=u, seconds=round(time.time() - t0 - eval_seconds, 1), **s)
        if cfg.rl_eval_every and ((u + 1) % cfg.rl_eval_every == 0 or u + 1 == cfg.rl_updates):
            t1 = time.time()
            curve.append((u + 1, held_out_accuracy(cfg, model, vq, held, dev)))
            s["held_out_accuracy"], eval_seconds = curve[-1][1], eval_seconds + time.time() - t1
        log.append(s)
        report.log_metrics(cfg, stage="rl", **s)
        recent = log[-10:]
        bar.set_postfix(reward=f"{sum(x['reward'] for x in recent) / len(recent):.3f}", kl=f"{s['kl']:.4f}")
        if time.time() - t_snap >= cfg.snapshot_secs and u + 1 < cfg.rl_updates:
            save_progress(cfg, "rl", u + 1, "updates", log=log, curve=curve, eval_seconds=eval_seconds,
                          seconds=time.time() - t0, **snapshot(model=model, opt=opt, g_prompts=g_prompts, g=g))
            t_snap = time.time()
    series = {"rollout reward": [(x["update"], x["reward"]) for x in log]}
    if curve:
        series[f"held-out accuracy ({len(held)} prompts)"] = curve
    report.draw_curves(series, os.path.join(cfg.out, "rl_reward.png"), "RL: rollout reward per update",
                       smooth={"rollout reward": 10})
    ck = save_stage(cfg, "rl", dict(state=state_dict(model), log=log, curve=curve,
                                    seconds=time.time() - t0 - eval_seconds))
    drop_progress(cfg, "rl")
    return model, ck


def held_out_prompts(cfg, data):
    """compare_eval_prompts entries of the evaluation set (eval_samples copies of each prompt), spread evenly
    (balanced categories): RL's curves. Up to eval_prompts distinct prompts, one sample each; beyond, repeats."""
    entries = data["eval_prompts"]
    return entries[:: max(1, len(entries) // cfg.compare_eval_prompts)][:cfg.compare_eval_prompts]


def example_trajectory(cfg, model, vq, dev, prompt="a red circle left of a blue square"):
    """One recorded trajectory with the evaluation's sampling settings, and its k critical steps (focus.py)."""
    g = torch.Generator(dev).manual_seed(cfg.seed)
    _, traj = sample(model, encode_prompts([prompt]).to(dev), cfg.sample_steps, cfg.cfg_scale, cfg.temperature,
                     cfg.choice_temperature, mode=cfg.order, generator=g, record=True)
    return traj, focus.critical_steps(focus.information_gain(traj, vq.codes), cfg.rl_k)


def shortcut_configs(cfg):
    """The speed table's rows: vanilla at sc_steps; at each budget B of base calls, vanilla with B steps, the cache
    and the shortcut at sc_steps; and, when the evaluation runs fewer steps, the shortcut there at half its calls
    beside vanilla with as many steps and with all of them (where the shortcut does not pay)."""
    S, T, budgets = cfg.sc_steps, cfg.sample_steps, sweep_list(cfg.sc_budgets)
    rows = [("vanilla", S, S)] + [("vanilla", b, b) for b in budgets]
    rows += [("cache", S, b) for b in budgets] + [("shortcut", S, b) for b in budgets]
    if T < S:
        half = max(1, T // 2)
        rows += [("vanilla", half, half), ("vanilla", T, T), ("shortcut", T, half)]
    return list(dict.fromkeys(rows))  # each row once, in this order


def stage_shortcut(cfg, model, vq, data, dev):
    """MIGM-Shortcut: train on the final model's trajectories of sc_steps steps, then the latency / quality table."""
    if (ck := load_stage(cfg, "shortcut")) is not None:
        return ck
    g = torch.Generator(dev).manual_seed(dist.seed(cfg.seed + 6))  # sampling the trajectories
    g_cpu = torch.Generator().manual_seed(cfg.seed + 7)  # the training prompts and batches
    S, T, D = cfg.sc_steps, cfg.sample_steps, cfg.d_model
    kw = dict(cfg_scale=cfg.cfg_scale, temperature=cfg.temperature, choice_temperature=cfg.choice_temperature,
              mode=cfg.order)  # the evaluation's sampler, trajectories and table alike
    t0 = time.time()
    ids = encode_prompts(world.sample_prompts(cfg.sc_prompts, g_cpu)[dist.share(cfg.sc_prompts)]).to(dev)
    if dist.rank():
        g_cpu.manual_seed(dist.seed(cfg.seed + 7))  # torchrun: each rank its own training batches
    traj = shortcut.collect(model, ids, S, generator=g, batch=cfg.eval_batch, **kw)
    net = shortcut.Shortcut(D, cfg.sc_width or D // 2).to(dev)
    dist.broadcast(net)
    log = shortcut.train_shortcut(net, model, traj, cfg.sc_iters, cfg.sc_batch, cfg.sc_lr,
                                   generator=g_cpu, unroll=cfg.sc_unroll, sync=dist.sync_grads)
    net.eval()
    _, val_rows = shortcut.split_rows(traj)  # the validation trajectories
    with autocast(dev):
        distance = bench.step_distance_mse(net, model, traj, val_rows, max_d=min(4, S - 1))
    val_prompts = traj["traj"][val_rows].unique()  # (P_val,) which prompts they sampled
    train_seconds = time.time() - t0
    del traj
    moves = {S: distance[1]} if S > 1 else {}  # how far the features move in one step, and the shortcut's error
    if 1 < T < S:  # the same at the evaluation's step count, on new trajectories of the validation prompts
        short = shortcut.collect(model, ids[val_prompts], T, generator=g, batch=cfg.eval_batch, **kw)
        with autocast(dev):
            moves[T] = bench.step_distance_mse(net, model, short, torch.arange(short["traj"].shape[0]), max_d=1)[1]
    # one sampling step of each for one image (with --sc-uncond cache the shortcut moves the conditional branch only)
    (base_flops, base_ops), (sc_flops, sc_ops) = bench.step_cost(model, net, 1 if cfg.sc_uncond == "cache" else 2)
    pick = torch.linspace(0, len(data["eval_prompts"]) - 1, cfg.sc_eval).round().long().tolist()  # an even spread
    prompts, ref = [data["eval_prompts"][i] for i in pick], data["eval_ref"][pick].float() / 255

    def score(tokens):  # accuracy overall and per category (where a sampler loses shows there), quality
        images = vq.decode(tokens).cpu()
        acc = rewards.accuracy_report(rewards.reward(images, prompts), prompts)
        return dict(accuracy=acc.pop("overall"), **acc, quality=rewards.quality(images, ref))

    table = [] if dist.rank() else bench.speed_table(  # torchrun: rank 0 times it alone
        model, net, shortcut_configs(cfg), encode_prompts(prompts).to(dev), score, S, cfg.sc_bench_batch,
        dict(kw, uncond=cfg.sc_uncond), seed=cfg.seed + 100)
    for r in table:
        report.log_metrics(cfg, stage="shortcut", **r)
    return save_stage(cfg, "shortcut", dict(
        state=state_dict(net), log=log, distance=distance, moves=moves, table=table, train_seconds=train_seconds,
        params=sum(q.numel() for q in net.parameters()), flops_ratio=sc_flops / base_flops,
        ops=(sc_ops, base_ops), bench_batch=cfg.sc_bench_batch, n_eval=len(prompts), device=str(dev)))


def main(argv=None):
    return launch(parse_config(argv, __doc__))


def launch(cfg, extra=None):
    """run() on this process's device (under torchrun, inside the process group). extra: {name: stage(cfg, vq,
    data, dev)} run after the others, each result under its name in res and the report (compare.py's hook)."""
    dev = dist.setup(pick_device(cfg.device))  # torchrun: join the process group, one device per rank
    try:
        res = run(cfg, dev, extra or {})
    except BaseException:
        dist.cleanup(wait=False)  # a failing process does not wait for the others
        raise
    dist.cleanup()
    return res


def run(cfg, dev, extra):
    """The stages in order, on `dev` (launch has joined torchrun's process group when there is one)."""
    if (W := dist.world()) > 1 and (cfg.batch_size % W or cfg.rl_prompts % W or cfg.sc_prompts < 2 * W):
        raise SystemExit(f"with {W} processes, --batch-size and --rl-prompts must be multiples of {W} and "
                         f"--sc-prompts at least {2 * W}: each process takes an equal share")
    make_out(cfg.out)
    marks, wall = [time.time()], {}  # this invocation's seconds per stage (a stage found finished: about 0)

    def lap(name, out):
        marks.append(time.time())
        wall[name] = marks[-1] - marks[-2]
        return out

    data = stage_data(cfg)
    vq, vq_mse = lap("data and codebook", stage_codebook(cfg, data))
    model, pre = lap("pretrain", stage_pretrain(cfg, vq, dev))
    res = dict(cfg=cfg, pretrain=pre, eval_pretrain=stage_evaluate(cfg, "eval_pretrain", model, vq, data, dev))
    traj, marked = example_trajectory(cfg, model, vq, dev)  # one unmasking; its k critical steps framed in red
    frames = report.trajectory_frames(vq, traj, marked=marked)
    lap("evaluate", report.save_gif(frames, os.path.join(cfg.out, "trajectory.gif")))
    models = {"pretrained": model}
    if cfg.rl_updates > 0:
        models["pretrained"] = copy.deepcopy(model)  # RL trains `model` in place
        model, res["rl"] = lap("rl", stage_rl(cfg, model, vq, data, dev))
        res["eval_rl"] = lap("evaluate after RL", stage_evaluate(cfg, "eval_rl", model, vq, data, dev))
        models["after RL"] = model
    if cfg.sweep_steps:
        res["sweep"] = lap("sweep", stage_sweep(cfg, models, vq, data, dev))
    if cfg.sc_iters > 0:
        res["shortcut"] = lap("shortcut", stage_shortcut(cfg, model, vq, data, dev))
    for name, stage in extra.items():
        res[name] = lap(name, stage(cfg, vq, data, dev))
    res["wall"] = dict(wall, total=time.time() - marks[0])
    report.write_report(cfg, dev, vq_mse, res)
    print("[wall] " + ", ".join(f"{k} {v:.0f}s" for k, v in res["wall"].items()) + f"; see {cfg.out}/report.md")
    return res


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # finished stages and the last progress snapshot are on disk: say so, no traceback
        raise SystemExit("\ninterrupted: the same command goes on from the last finished stage or snapshot")
