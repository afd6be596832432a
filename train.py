"""
The whole story, end to end: data -> codebook -> pretrain -> evaluate, writing out/.

    python train.py                   # GPU preset if CUDA is there, else the CPU preset (it says which)
    python train.py --preset tiny     # the smoke run the tests use (under a minute on a CPU)
    python train.py --pretrain-steps 500 --fresh   # any Config field is a flag; --fresh redoes stages

Each stage saves an atomic checkpoint (temp file, then rename) holding the config fields it
depends on; a stage whose checkpoint exists and matches is skipped, a checkpoint made with
other settings is an error that names the fields (use --fresh or another --out).
Outputs: out/report.md (tables), out/metrics.jsonl, out/samples_pretrain.png (each prompt
with its verdict), out/trajectory.gif (one unmasking), checkpoints out/*.pt.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import grpo
import rewards
from model import MaskedTransformer, ModelConfig, VQCodebook, autocast, encode_prompts, maskgit_loss
from sample import sample, save_gif, trajectory_frames


@dataclass
class Config:
    preset: str = "auto"  # auto | tiny | cpu | gpu (auto: gpu when CUDA is there, else cpu)
    out: str = "out"
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0
    fresh: bool = False  # redo every stage even if its checkpoint matches
    # world and codebook
    image_size: int = 32
    patch: int = 4
    codebook_size: int = 1024
    fit_images: int = 4000  # rendered scenes the codebook is fitted on
    # model
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    # pretraining (training scenes are rendered on the fly: unlimited fresh data)
    pretrain_steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.05
    prompt_drop: float = 0.1
    # sampling and evaluation
    sample_steps: int = 12
    cfg_scale: float = 2.0
    temperature: float = 0.8
    choice_temperature: float = 4.5
    eval_prompts: int = 400  # fixed, seeded, balanced over the four categories
    eval_samples: int = 3  # samples per prompt
    eval_batch: int = 400
    # RL (GRPO, grpo.py)
    rl_updates: int = 60
    rl_prompts: int = 8  # prompts per update
    group_size: int = 8  # samples per prompt (G)
    rl_lr: float = 2e-5
    rl_mu: int = 1  # inner updates per rollout batch
    rl_estimator: str = "remask"  # remask | replay
    rl_steps: str = "random"  # all | random
    rl_k: int = 4  # scored steps when rl_steps is random
    clip_eps: float = 0.2
    beta: float = 0.01


PRESETS = {
    "tiny": dict(image_size=32, fit_images=300, d_model=32, n_layers=1, n_heads=2, pretrain_steps=30,
                 batch_size=16, warmup=5, sample_steps=4, eval_prompts=8, eval_samples=2, eval_batch=16,
                 rl_updates=3, rl_prompts=2, group_size=4),
    "cpu": dict(),  # the Config defaults
    "gpu": dict(image_size=64, d_model=384, n_layers=8, n_heads=6, pretrain_steps=3000, batch_size=256,
                lr=1e-3, warmup=200, eval_batch=1200),
}

CHOICES = {"preset": ["auto", *PRESETS], "device": ["auto", "cpu", "cuda", "mps"],
           "rl_estimator": ["remask", "replay"], "rl_steps": ["all", "random"]}

# the config fields each stage's result depends on (its own and its inputs')
STAGE_FIELDS = {
    "data": ["seed", "image_size", "fit_images", "eval_prompts", "eval_samples"],
    "codebook": ["patch", "codebook_size"],
    "pretrain": ["d_model", "n_layers", "n_heads", "pretrain_steps", "batch_size", "lr", "warmup",
                 "weight_decay", "prompt_drop"],
    "eval_pretrain": ["sample_steps", "cfg_scale", "temperature", "choice_temperature"],
    "rl": ["rl_updates", "rl_prompts", "group_size", "rl_lr", "rl_mu", "rl_estimator", "rl_steps", "rl_k",
           "clip_eps", "beta"],
    "eval_rl": [],
}


def stage_config(cfg, stage):
    names = []
    for s in STAGE_FIELDS:
        names += STAGE_FIELDS[s]
        if s == stage:
            return {k: getattr(cfg, k) for k in names}
    raise KeyError(stage)


# ----------------------------------------------------------------------------------
# CLI, device, checkpoints


def parse_config(argv=None):
    """Config from the command line: --preset picks defaults, every other field is a flag that overrides."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            ap.add_argument(flag, action="store_true", help="(default off)")
        elif f.name in CHOICES:
            ap.add_argument(flag, choices=CHOICES[f.name], default=None)
        else:
            ap.add_argument(flag, type=f.type, default=None, help=f"default {f.default} (or the preset's)")
    args = ap.parse_args(argv)  # unknown or ill-typed flags exit here with argparse's message
    preset = args.preset or "auto"
    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
        print(f"preset: {preset} ({'CUDA found' if preset == 'gpu' else 'no CUDA: the CPU preset'})")
    cfg = Config(preset=preset, **PRESETS[preset])
    # None: flag not given; False: a store_true flag not given (0 and 0.0 are real values)
    overrides = {k: v for k, v in vars(args).items() if v is not None and v is not False and k != "preset"}
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.image_size % cfg.patch:
        ap.error(f"--image-size {cfg.image_size} must be a multiple of --patch {cfg.patch}")
    if cfg.eval_prompts % 4:
        ap.error("--eval-prompts must be a multiple of 4 (balanced over the four categories)")
    return cfg


def pick_device(name=None):
    """cuda > mps > cpu, unless named."""
    if name and name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but CUDA is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one


def load_stage(cfg, stage):
    """The stage's checkpoint if it exists and matches the config; None if missing or --fresh."""
    path = os.path.join(cfg.out, f"{stage}.pt")
    if cfg.fresh or not os.path.exists(path):
        return None
    ck = torch.load(path, map_location="cpu", weights_only=False)
    want = stage_config(cfg, stage)
    diff = {k: (ck["config"].get(k), v) for k, v in want.items() if ck["config"].get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"{path} was made with other settings ({lines}). "
                         f"Use --fresh to redo it, or --out for a separate folder.")
    print(f"[{stage}] checkpoint matches the config: skipped")
    return ck


def save_stage(cfg, stage, payload):
    payload = dict(payload, config=stage_config(cfg, stage))
    save_atomic(payload, os.path.join(cfg.out, f"{stage}.pt"))
    return payload


def log_metrics(cfg, **row):
    with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def model_config(cfg):
    return ModelConfig(codebook_size=cfg.codebook_size, n_tokens=(cfg.image_size // cfg.patch) ** 2,
                       d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)


def state_dict(model):
    model = getattr(model, "_orig_mod", model)  # never save torch.compile's prefixed keys
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------
# Stages


def stage_data(cfg):
    """The codebook's fitting scenes and the fixed evaluation set (prompts and reference renders)."""
    if (ck := load_stage(cfg, "data")) is not None:
        return ck
    g = torch.Generator().manual_seed(cfg.seed)
    fit = rewards.render(rewards.sample_prompts(cfg.fit_images, g), cfg.image_size, g)
    per_cat = cfg.eval_prompts // 4
    prompts = [p for c in rewards.CATEGORIES for p in rewards.sample_prompts(per_cat, g, [c])]
    eval_prompts = [p for p in prompts for _ in range(cfg.eval_samples)]
    ref = rewards.render(eval_prompts, cfg.image_size, g)  # what the quality metric compares with
    to_u8 = lambda x: (x * 255).round().byte()
    return save_stage(cfg, "data", dict(fit=to_u8(fit), eval_prompts=eval_prompts, eval_ref=to_u8(ref)))


def stage_codebook(cfg, data):
    if (ck := load_stage(cfg, "codebook")) is not None:
        vq = VQCodebook(cfg.codebook_size, cfg.patch)
        vq.load_state_dict(ck["state"])
        return vq
    t0 = time.time()
    vq = VQCodebook.fit(data["fit"].float() / 255, cfg.codebook_size, cfg.patch,
                        torch.Generator().manual_seed(cfg.seed + 1), progress=True)
    mse = ((vq.decode(vq.encode(data["eval_ref"].float() / 255)) - data["eval_ref"].float() / 255) ** 2).mean()
    print(f"[codebook] K={cfg.codebook_size} fitted in {time.time() - t0:.1f}s, eval-set reconstruction MSE {mse:.2e}")
    save_stage(cfg, "codebook", dict(state=vq.state_dict(), mse=float(mse)))
    return vq


def lr_at(step, cfg, total):
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, total - cfg.warmup)))


def stage_pretrain(cfg, vq, dev):
    torch.manual_seed(cfg.seed)  # the weight init
    model = MaskedTransformer(model_config(cfg)).to(dev)
    if (ck := load_stage(cfg, "pretrain")) is not None:
        model.load_state_dict(ck["state"])
        return model, ck
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[pretrain] {n_params / 1e6:.2f}M parameters, {cfg.pretrain_steps} steps of batch {cfg.batch_size} on {dev}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    g_data = torch.Generator().manual_seed(cfg.seed + 2)  # scenes (CPU)
    g_mask = torch.Generator(dev).manual_seed(cfg.seed + 3)  # masks and prompt drop (on the device)
    vq_dev = vq.to(dev)
    t0, losses = time.time(), []
    bar = tqdm(range(cfg.pretrain_steps), desc="pretrain")
    for step in bar:
        prompts = rewards.sample_prompts(cfg.batch_size, g_data)
        tokens = vq_dev.encode(rewards.render(prompts, cfg.image_size, g_data).to(dev))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, cfg.pretrain_steps)
        with autocast(dev):
            loss = maskgit_loss(model, tokens, encode_prompts(prompts).to(dev), g_mask, cfg.prompt_drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.pretrain_steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
            log_metrics(cfg, stage="pretrain", step=step, loss=losses[-1], seconds=round(time.time() - t0, 1))
    seconds = time.time() - t0
    ck = save_stage(cfg, "pretrain", dict(state=state_dict(model), params=n_params, seconds=seconds,
                                          first_loss=sum(losses[:20]) / len(losses[:20]),
                                          last_loss=sum(losses[-50:]) / len(losses[-50:])))
    vq.cpu()
    return model, ck


@torch.no_grad()
def generate(cfg, model, vq, prompts, dev, seed, mode="confidence"):
    """Sample images for a list of prompts in batches (CPU tensor (B, 3, H, W))."""
    model.eval()
    g = torch.Generator(dev).manual_seed(seed)
    vq_dev = vq.to(dev)
    out = []
    for i in tqdm(range(0, len(prompts), cfg.eval_batch), desc="sample", leave=False):
        ids = encode_prompts(prompts[i:i + cfg.eval_batch]).to(dev)
        tok = sample(model, ids, cfg.sample_steps, cfg.cfg_scale, cfg.temperature, cfg.choice_temperature,
                     mode=mode, generator=g)
        out.append(vq_dev.decode(tok).cpu())
    vq.cpu()
    return torch.cat(out)


def stage_evaluate(cfg, name, model, vq, data, dev):
    """Accuracy overall and per category, and the quality metric, on the fixed evaluation set."""
    if (ck := load_stage(cfg, name)) is not None:
        return ck
    t0 = time.time()
    prompts = data["eval_prompts"]
    images = generate(cfg, model, vq, prompts, dev, seed=cfg.seed + 100)
    r = rewards.reward(images, prompts)
    acc = rewards.accuracy_report(r, prompts)
    fd = rewards.quality(images, data["eval_ref"].float() / 255)
    seconds = time.time() - t0
    print(f"[{name}] accuracy {acc['overall']:.1%} "
          + " ".join(f"{c} {acc[c]:.1%}" for c in rewards.CATEGORIES) + f", quality FD {fd:.3f} ({seconds:.0f}s)")
    log_metrics(cfg, stage=name, **acc, quality=fd, reward=r.mean().item(), seconds=round(seconds, 1))
    # a grid: the first sample of 4 prompts per category, each with its verdict
    per = cfg.eval_samples * (cfg.eval_prompts // 4)
    pick = [c * per + j * cfg.eval_samples for c in range(4) for j in range(min(4, cfg.eval_prompts // 4))]
    rewards.save_grid(images[pick], rewards.verdict_captions([prompts[i] for i in pick], r[pick]),
                      os.path.join(cfg.out, f"samples_{name.split('_', 1)[1]}.png"))
    return save_stage(cfg, name, dict(accuracy=acc, quality=fd, reward=r.mean().item(), seconds=seconds,
                                      rewards=r, n=len(prompts)))


def stage_rl(cfg, model, vq, dev):
    """GRPO from the pretrained weights against a frozen copy of them (the KL reference)."""
    if (ck := load_stage(cfg, "rl")) is not None:
        model.load_state_dict(ck["state"])
        return model, ck
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.rl_lr, betas=(0.9, 0.95), weight_decay=0.0)
    g_prompts = torch.Generator().manual_seed(cfg.seed + 4)
    g = torch.Generator(dev).manual_seed(cfg.seed + 5)
    vq_dev = vq.to(dev)
    log, t0 = [], time.time()
    bar = tqdm(range(cfg.rl_updates), desc="rl")
    for u in bar:
        prompts = rewards.sample_prompts(cfg.rl_prompts, g_prompts)
        flat_prompts = [p for p in prompts for _ in range(cfg.group_size)]
        score = lambda tok: rewards.reward(vq_dev.decode(tok).cpu(), flat_prompts)
        s = grpo.rl_step(model, ref, opt, encode_prompts(prompts).to(dev), score, cfg.group_size,
                         dict(steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                              mode="stochastic"),
                         steps=cfg.rl_steps, k=cfg.rl_k, estimator=cfg.rl_estimator, mu=cfg.rl_mu,
                         clip_eps=cfg.clip_eps, beta=cfg.beta, generator=g)
        s = dict(update=u, seconds=round(time.time() - t0, 1), **s)
        log.append(s)
        log_metrics(cfg, stage="rl", **s)
        recent = log[-10:]
        bar.set_postfix(reward=f"{sum(x['reward'] for x in recent) / len(recent):.3f}", kl=f"{s['kl']:.4f}")
    vq.cpu()
    draw_curve([x["reward"] for x in log], os.path.join(cfg.out, "rl_reward.png"), "rollout reward per update")
    return model, save_stage(cfg, "rl", dict(state=state_dict(model), log=log, seconds=time.time() - t0))


def draw_curve(values, path, title, w=480, h=240, pad=30):
    """A line plot with Pillow: raw values in grey, a 10-point running mean in blue."""
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    lo, hi = min(values + [0.0]), max(values + [1e-9])
    xy = lambda i, v: (pad + (w - 2 * pad) * i / max(1, len(values) - 1), h - pad - (h - 2 * pad) * (v - lo) / (hi - lo))
    smooth = [sum(values[max(0, i - 9):i + 1]) / len(values[max(0, i - 9):i + 1]) for i in range(len(values))]
    for vals, color in ((values, (180, 180, 180)), (smooth, (40, 80, 220))):
        if len(vals) > 1:
            d.line([xy(i, v) for i, v in enumerate(vals)], fill=color, width=2)
    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    d.text((pad, 8), f"{title}  (min {lo:.2f}, max {hi:.2f})", fill="black")
    im.save(path)


def write_trajectory_gif(cfg, model, vq, dev, prompt="a red circle left of a blue square"):
    g = torch.Generator(dev).manual_seed(cfg.seed)
    _, traj = sample(model, encode_prompts([prompt]).to(dev), cfg.sample_steps, cfg.cfg_scale, generator=g, record=True)
    save_gif(trajectory_frames(vq, traj), os.path.join(cfg.out, "trajectory.gif"))


def acc_row(name, ev):
    acc = ev["accuracy"]
    return (f"| {name} | {acc['overall']:.1%} | " + " | ".join(f"{acc[c]:.1%}" for c in rewards.CATEGORIES)
            + f" | {ev['reward']:.3f} | {ev['quality']:.3f} |")


def write_report(cfg, dev, vq_mse, res):
    pre = res["pretrain"]
    lines = [
        "# Report", "",
        f"Preset `{cfg.preset}` on `{dev}`; command: `python {' '.join(sys.argv)}`", "",
        "## Pretraining", "",
        "| image | tokens | codebook K | VQ MSE | params | steps x batch | loss first -> last | pretrain s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {cfg.image_size}x{cfg.image_size} | {(cfg.image_size // cfg.patch) ** 2} | {cfg.codebook_size} | {vq_mse:.1e} "
        f"| {pre['params'] / 1e6:.2f}M | {cfg.pretrain_steps} x {cfg.batch_size} | {pre['first_loss']:.2f} -> "
        f"{pre['last_loss']:.2f} | {pre['seconds']:.0f} |", "",
        f"Evaluation: {cfg.eval_prompts} prompts x {cfg.eval_samples} samples, T={cfg.sample_steps}, "
        f"CFG {cfg.cfg_scale}, temperature {cfg.temperature}, confidence sampling; accuracy = reward 1.0.", "",
        "| model | overall | " + " | ".join(rewards.CATEGORIES) + " | mean reward | quality FD (lower is better) |",
        "| --- | --- | " + " | ".join("---" for _ in rewards.CATEGORIES) + " | --- | --- |",
        acc_row("pretrained", res["eval_pretrain"]),
    ]
    if "eval_rl" in res:
        rl = res["rl"]
        lines += [acc_row("after RL", res["eval_rl"]), "", "## RL (GRPO)", "",
                  f"{cfg.rl_updates} updates x {cfg.rl_prompts} prompts x G={cfg.group_size}, estimator "
                  f"`{cfg.rl_estimator}`, steps `{cfg.rl_steps}` (k={cfg.rl_k}), mu={cfg.rl_mu}, lr {cfg.rl_lr}, "
                  f"beta {cfg.beta}: {rl['seconds']:.0f}s. Reward curve: `rl_reward.png`; before/after samples "
                  f"(same prompts and seeds): `samples_pretrain.png`, `samples_rl.png`."]
    with open(os.path.join(cfg.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def load_generator(out, dev):
    """(model, vq, cfg) from a finished run's folder: the RL weights when there are any, else pretrained."""
    pre = torch.load(os.path.join(out, "pretrain.pt"), map_location="cpu", weights_only=False)
    cb = torch.load(os.path.join(out, "codebook.pt"), map_location="cpu", weights_only=False)
    cfg = Config(**{k: v for k, v in pre["config"].items()}, **{k: v for k, v in cb["config"].items() if k not in pre["config"]})
    model = MaskedTransformer(model_config(cfg)).to(dev)
    rl = os.path.join(out, "rl.pt")
    model.load_state_dict(torch.load(rl, map_location="cpu", weights_only=False)["state"] if os.path.exists(rl) else pre["state"])
    vq = VQCodebook(cfg.codebook_size, cfg.patch)
    vq.load_state_dict(cb["state"])
    return model.eval(), vq.to(dev), cfg


def main(argv=None):
    cfg = parse_config(argv)
    dev = pick_device(cfg.device)
    os.makedirs(cfg.out, exist_ok=True)
    t0 = time.time()
    data = stage_data(cfg)
    vq = stage_codebook(cfg, data)
    model, pre = stage_pretrain(cfg, vq, dev)
    res = dict(cfg=cfg, pretrain=pre, eval_pretrain=stage_evaluate(cfg, "eval_pretrain", model, vq, data, dev))
    write_trajectory_gif(cfg, model, vq, dev)
    if cfg.rl_updates > 0:
        model, res["rl"] = stage_rl(cfg, model, vq, dev)
        res["eval_rl"] = stage_evaluate(cfg, "eval_rl", model, vq, data, dev)
    vq_mse = torch.load(os.path.join(cfg.out, "codebook.pt"), weights_only=False)["mse"]
    write_report(cfg, dev, vq_mse, res)
    print(f"done in {time.time() - t0:.0f}s; see {cfg.out}/report.md")
    return res


if __name__ == "__main__":
    main()
