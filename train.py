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
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

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
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    prompt_drop: float = 0.1
    # sampling and evaluation
    sample_steps: int = 12
    cfg_scale: float = 2.0
    temperature: float = 1.0
    choice_temperature: float = 4.5
    eval_prompts: int = 400  # fixed, seeded, balanced over the four categories
    eval_samples: int = 3  # samples per prompt
    eval_batch: int = 400


PRESETS = {
    "tiny": dict(image_size=32, fit_images=300, d_model=32, n_layers=1, n_heads=2, pretrain_steps=30,
                 batch_size=16, warmup=5, sample_steps=4, eval_prompts=8, eval_samples=2, eval_batch=16),
    "cpu": dict(),  # the Config defaults
    "gpu": dict(image_size=64, d_model=384, n_layers=8, n_heads=6, pretrain_steps=3000, batch_size=256,
                lr=6e-4, warmup=200, eval_batch=1200),
}

# the config fields each stage's result depends on (its own and its inputs')
STAGE_FIELDS = {
    "data": ["seed", "image_size", "fit_images", "eval_prompts", "eval_samples"],
    "codebook": ["patch", "codebook_size"],
    "pretrain": ["d_model", "n_layers", "n_heads", "pretrain_steps", "batch_size", "lr", "warmup",
                 "weight_decay", "prompt_drop"],
    "eval_pretrain": ["sample_steps", "cfg_scale", "temperature", "choice_temperature"],
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
        if f.type is bool or f.type == "bool":
            ap.add_argument(flag, action="store_true", help=f"(default off)")
        elif f.name == "preset":
            ap.add_argument(flag, choices=["auto", *PRESETS], default=None)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            ap.add_argument(flag, type=typ, default=None, help=f"default {f.default} (or the preset's)")
    args = ap.parse_args(argv)  # unknown or ill-typed flags exit here with argparse's message
    preset = args.preset or "auto"
    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
        print(f"preset: {preset} ({'CUDA found' if preset == 'gpu' else 'no CUDA: the CPU preset'})")
    cfg = Config(preset=preset, **PRESETS[preset])
    overrides = {k: v for k, v in vars(args).items() if v not in (None, False) and k != "preset"}
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


def write_trajectory_gif(cfg, model, vq, dev, prompt="a red circle left of a blue square"):
    g = torch.Generator(dev).manual_seed(cfg.seed)
    _, traj = sample(model, encode_prompts([prompt]).to(dev), cfg.sample_steps, cfg.cfg_scale, generator=g, record=True)
    save_gif(trajectory_frames(vq, traj), os.path.join(cfg.out, "trajectory.gif"))


def write_report(cfg, dev, vq_mse, pre, ev):
    acc = ev["accuracy"]
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
        f"CFG {cfg.cfg_scale}, confidence sampling.", "",
        "| model | overall | " + " | ".join(rewards.CATEGORIES) + " | quality FD (lower is better) |",
        "| --- | --- | " + " | ".join("---" for _ in rewards.CATEGORIES) + " | --- |",
        f"| pretrained | {acc['overall']:.1%} | " + " | ".join(f"{acc[c]:.1%}" for c in rewards.CATEGORIES)
        + f" | {ev['quality']:.3f} |", "",
    ]
    with open(os.path.join(cfg.out, "report.md"), "w") as f:
        f.write("\n".join(lines))


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
    ev = stage_evaluate(cfg, "eval_pretrain", model, vq, data, dev)
    write_trajectory_gif(cfg, model, vq, dev)
    vq_mse = torch.load(os.path.join(cfg.out, "codebook.pt"), weights_only=False)["mse"]
    write_report(cfg, dev, vq_mse, pre, ev)
    print(f"done in {time.time() - t0:.0f}s; see {cfg.out}/report.md")
    return dict(cfg=cfg, pretrain=pre, eval_pretrain=ev)


if __name__ == "__main__":
    main()
