"""
Where a run lives: the device it runs on, its folder and its checkpoints (as small as resuming needs), and
loading a finished run for the demos.

  out/<stage>.pt          a finished stage's result and the Config fields it depends on (STAGE_FIELDS below);
                          a rerun skips the stage when they match, and stops naming the fields when they do not
  out/<stage>.partial.pt  an unfinished stage's snapshot (weights, optimiser, generator states), written every
                          `snapshot_secs`: a rerun after a crash goes on where it stopped, with the same result
                          (metrics.jsonl may hold the steps between the snapshot and the crash twice)

Every file is written to a temporary name and renamed, so a crash leaves the old file or the new one.
"""

import os

import torch

import dist
import rewards
import shortcut
from config import DEFAULTS, Config, model_config, sweep_list, sweep_orders
from model import MaskedTransformer, VQCodebook

# the config fields each stage's result depends on (its own and its inputs')
STAGE_FIELDS = {
    "data": ["seed", "image_size", "grid", "fit_images", "eval_prompts", "eval_samples"],
    "codebook": ["patch", "codebook_size"],
    "pretrain": ["d_model", "n_layers", "n_heads", "pretrain_steps", "batch_size", "lr", "warmup",
                 "weight_decay", "prompt_drop"],
    "eval_pretrain": ["sample_steps", "cfg_scale", "temperature", "choice_temperature", "order"],
    "rl": ["rl_updates", "rl_prompts", "group_size", "rl_lr", "rl_schedule", "rl_mu", "rl_estimator",
           "rl_mask_floor", "rl_steps", "rl_k", "rl_tokens", "rl_routing", "rl_reward", "rl_credit", "rl_blame",
           "rl_mode", "rl_per_sample", "rl_pool", "clip_eps", "beta"],
    "eval_rl": [],
    "shortcut": ["sc_steps", "sc_budgets", "sc_eval", "sc_prompts", "sc_iters", "sc_batch", "sc_lr", "sc_width",
                 "sc_unroll", "sc_uncond",
                 "sc_bench_batch"],
}


COMPARE_FIELDS = ["compare_seeds", "compare_updates", "compare_eval_prompts", "compare_variants"]


def stage_config(cfg, stage):
    if stage == "sweep":  # the evaluation settings at other step counts, of both models, in each of sweep_orders
        return dict(stage_config(cfg, "rl"), sweep_steps=cfg.sweep_steps, orders=",".join(sweep_orders(cfg)))
    if stage == "compare":  # from the pretrained weights: depends on the RL settings, not on RL's result
        return dict(stage_config(cfg, "rl"), **{k: getattr(cfg, k) for k in COMPARE_FIELDS})
    names = []
    for s in STAGE_FIELDS:
        names += STAGE_FIELDS[s]
        if s == stage:
            fields = {k: getattr(cfg, k) for k in names}
            if s not in ("data", "codebook", "pretrain"):  # from the evaluation on, the verifier scored it
                fields["verifier"] = rewards.VERSION
            if s == "shortcut":  # the order its trajectories and table sample in (once always confidence)
                fields["sc_order"] = cfg.order
            return fields
    raise KeyError(stage)


# a key newer than a checkpoint counts as what the code did before it existed: a Config field's default, the
# first verifier (rewards.VERSION), an evaluation and a shortcut stage in the confidence order (the latter at the
# evaluation's steps: no value matches it), and a parallelism table in the confidence order only
BEFORE = dict(DEFAULTS, verifier=1, sc_steps=None, sc_budgets=None, sc_eval=None, orders="confidence",
              sc_order="confidence", order="confidence")


def config_of(ck):
    """The Config fields a checkpoint holds (its other keys, such as the verifier's version, left out); a stage from
    the evaluation on made before the commit order was a field sampled in the confidence order."""
    fields = {k: v for k, v in ck["config"].items() if k in DEFAULTS}
    if "sample_steps" in fields and "order" not in fields:
        fields["order"] = BEFORE["order"]
    return fields


def make_out(path):
    """The run folder, made if missing; a path that cannot be one stops with a message."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a file of that name, no permission, a read-only disk
        raise SystemExit(f"--out {path}: cannot use it as the output folder ({e.strerror})")


def pick_device(name=None):
    """cuda > mps > cpu, unless named; a named device this machine lacks stops with a message."""
    mps = getattr(torch.backends, "mps", None)
    there = {"cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available()), "cpu": True}
    if not name or name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if there[kind]))
    dev = torch.device(name)
    if not there.get(dev.type, True):  # another kind (xpu, ...) is left to torch
        what = {"cuda": "CUDA", "mps": "MPS (Apple GPU)"}[dev.type]
        raise SystemExit(f"--device {name} asked for, but {what} is not available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"--device {name} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return dev


@dist.main_only
def save_atomic(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)  # a crash leaves the old file or the new one, never half of one


def load_checkpoint(path):
    """A file this project saved, onto the CPU (weights_only=False: ours hold configs and generator states too)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def load_stage(cfg, stage):
    """The stage's checkpoint if it exists and matches the config; None if missing or --fresh."""
    path = os.path.join(cfg.out, f"{stage}.pt")
    if cfg.fresh or not os.path.exists(path):
        return None
    ck = load_checkpoint(path)
    had = lambda k: ck["config"].get(k, BEFORE[k])
    diff = ", ".join(f"{k}: checkpoint {had(k)!r} vs now {v!r}" for k, v in stage_config(cfg, stage).items()
                     if had(k) != v)
    if diff:
        raise SystemExit(f"{path} was made with other settings ({diff}). "
                         f"Use --fresh to redo it, or --out for a separate folder.")
    print(f"[{stage}] checkpoint matches the config: skipped")
    return ck


def save_stage(cfg, stage, payload):
    payload = dict(payload, config=stage_config(cfg, stage))
    save_atomic(payload, os.path.join(cfg.out, f"{stage}.pt"))
    return payload


def load_progress(cfg, stage):
    """An unfinished stage's last snapshot (out/<stage>.partial.pt) if it matches the config, else None
    (always None under torchrun: dist.py)."""
    path = os.path.join(cfg.out, f"{stage}.partial.pt")
    if cfg.fresh or dist.world() > 1 or not os.path.exists(path):
        return None
    ck = load_checkpoint(path)
    if ck["config"] != stage_config(cfg, stage):
        print(f"[{stage}] {path} was made with other settings: starting the stage over")
        return None
    print(f"[{stage}] resuming from its snapshot after {ck['done']} {ck['unit']}")
    return ck


def save_progress(cfg, stage, done, unit, **state):
    """Atomically snapshot an unfinished stage: `done` steps (or updates, runs) and what resuming needs
    (one process only: under torchrun each rank's generators would need their own)."""
    if dist.world() > 1:
        return
    save_atomic(dict(state, done=done, unit=unit, config=stage_config(cfg, stage)),
                os.path.join(cfg.out, f"{stage}.partial.pt"))


@dist.main_only
def drop_progress(cfg, stage):
    """The stage finished: its snapshot is no longer needed."""
    if os.path.exists(path := os.path.join(cfg.out, f"{stage}.partial.pt")):
        os.remove(path)


def snapshot(**parts):
    """What resuming a loop needs: weights (a CPU copy), optimiser state, generator states."""
    return {k: state_dict(v) if isinstance(v, torch.nn.Module) else v.state_dict() if hasattr(v, "state_dict")
            else v.get_state() for k, v in parts.items()}


def restore(snap, **parts):
    """The inverse of snapshot: load each part's saved state into it."""
    for k, v in parts.items():
        (v.set_state if isinstance(v, torch.Generator) else v.load_state_dict)(snap[k])


def state_dict(model):
    """A CPU copy of the weights (a copy even on the CPU, where .cpu() would alias the live tensors)."""
    model = getattr(model, "_orig_mod", model)  # never save torch.compile's prefixed keys
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def require(out, *names):
    """The path of the last of `names` in a run folder; a missing one stops with what to run."""
    for name in names:
        if not os.path.exists(path := os.path.join(out, name)):
            raise SystemExit(f"{path} is missing: run `python train.py --out {out}` first")
    return path


def load_generator(out, dev, pretrained=False):
    """(model, vq, cfg) from a finished run's folder: the RL weights when there are any (and not
    `pretrained`), else the pretrained ones."""
    require(out, "codebook.pt", "pretrain.pt")
    ck = lambda name: load_checkpoint(os.path.join(out, f"{name}.pt"))
    pre, cb = ck("pretrain"), ck("codebook")
    # each stage's checkpoint holds every field up to its stage: the sampling settings (steps, CFG,
    # temperatures) first appear in eval_pretrain.pt and the RL ones in rl.pt, so read the latest there is
    later = [n for n in ("eval_pretrain", "rl", "eval_rl") if os.path.exists(os.path.join(out, f"{n}.pt"))]
    cfg = Config(**config_of(ck(later[-1]) if later else pre))
    model = MaskedTransformer(model_config(cfg)).to(dev)
    use_rl = os.path.exists(os.path.join(out, "rl.pt")) and not pretrained
    model.load_state_dict((ck("rl") if use_rl else pre)["state"])
    vq = VQCodebook(cfg.codebook_size, cfg.patch)
    vq.load_state_dict(cb["state"])
    return model.eval(), vq.to(dev), cfg


def shortcut_setting(ck, cfg):
    """(steps, base calls, commit order) a shortcut checkpoint is sampled at by default: the steps it was trained
    at, its table's largest budget and its table's order (a run made before sc_steps: the evaluation's steps and
    half of them; before sc_order: the confidence order)."""
    steps = ck["config"].get("sc_steps") or cfg.sample_steps
    budgets = sweep_list(ck["config"]["sc_budgets"]) if "sc_budgets" in ck["config"] else [max(2, steps // 2)]
    return steps, min(steps, max(budgets)), ck["config"].get("sc_order", BEFORE["sc_order"])


def load_shortcut(out, dev):
    """(shortcut net, its checkpoint dict: state, config, table, ...) from a finished run's shortcut.pt,
    built at the sizes it was trained at (f_in maps d_model to the bottleneck width)."""
    ck = load_checkpoint(require(out, "shortcut.pt"))
    width, d_model = ck["state"]["f_in.weight"].shape
    net = shortcut.Shortcut(d_model, width)
    net.load_state_dict(ck["state"])
    return net.to(dev).eval(), ck
