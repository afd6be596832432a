"""
The settings of train.py: the Config dataclass (one comment per field, shown by --help), its presets, and the
CLI built from it. Every field is a flag (`--rl-lr 1e-4`); `--preset tiny|cpu|gpu` picks the defaults the other
flags override. A run's device, folder and checkpoints are in runs.py.
"""

import argparse
import dataclasses
import inspect
import re
from dataclasses import dataclass

import torch

import shortcut
import world
from model import ModelConfig


@dataclass
class Config:
    preset: str = "auto"  # auto | tiny | cpu | gpu (auto: gpu when CUDA is there, else cpu)
    out: str = "out"
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0
    fresh: bool = False  # redo every stage even if its checkpoint matches
    compile: bool = False  # torch.compile pretraining's forward and the samplers' model calls (CUDA graphs on CUDA)
    # world and codebook
    image_size: int = 32
    patch: int = 4  # 4x4-pixel patches: an 8x8 grid of 64 image tokens at 32x32
    grid: int = 4  # objects (8 or 12 px) on this pixel grid: each spans 2x2 or 3x3 tokens (1: anywhere)
    codebook_size: int = 64
    fit_images: int = 4000  # rendered scenes the codebook is fitted on
    # model
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    # pretraining (training scenes are rendered on the fly: unlimited fresh data)
    pretrain_steps: int = 1800  # about 6 minutes on 2 CPU cores: a base that draws (docs/FINDINGS.md, 18)
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.05
    prompt_drop: float = 0.1
    # sampling and evaluation
    sample_steps: int = 12  # parallel decoding: 64 tokens in 12 steps, 5.3 per step on average (cosine: 1 to 8)
    cfg_scale: float = 1.5  # w in uncond + w (cond - uncond); 0: one pass; 1.5: best of 1-3, cpu preset (FINDINGS 20)
    temperature: float = 0.8
    choice_temperature: float = 4.5
    order: str = "spread"  # the evaluation's commit order: spread (MaskGIT's, apart) | confidence (MaskGIT) | halton
    eval_prompts: int = 400  # fixed, seeded, balanced over the four categories
    eval_samples: int = 2  # samples per prompt
    eval_batch: int = 400
    # RL (GRPO, grpo.py)
    rl_updates: int = 60
    rl_prompts: int = 8  # prompts per update
    group_size: int = 8  # samples per prompt (G)
    rl_lr: float = 1e-4
    rl_schedule: str = "constant"  # constant (MaskGRPO, MaskFocus) | cosine (to 0; Mask-GRPO, arXiv 2510.13418)
    rl_mu: int = 0  # inner updates per rollout batch; 0: the estimator's own (maskgrpo 6, MaskGRPO's; else 1)
    rl_estimator: str = "replay"  # replay (the sampler's commits) | remask (MaskFocus) | maskgrpo (MaskGRPO's masks)
    rl_mask_floor: float = 0.6  # maskgrpo: m in its mask ratios r_j = min(m + (1 - m)(j + 1)/mu, 0.999) (MaskGRPO: 0.6)
    rl_pool: str = "token"  # token: one mean over every scored token | step: a mean per step, then over steps
    rl_steps: str = "random"  # all | random | focus (focus.py: MaskFocus's critical steps; compare.py)
    rl_tokens: str = "all"  # all | critical (focus.py: GCPO's 30% critical tokens + dynamic weights)
    rl_routing: str = "off"  # off | entropy (focus.py: MaskFocus's entropy-routed rollouts)
    rl_reward: str = "partial"  # partial (rewards.reward: credit for near misses) | exact (1 iff satisfied, GenEval's)
    rl_credit: str = "sample"  # sample: one advantage a sample (the papers) | object: grpo.object_advantages
    rl_blame: float = 1.0  # object credit: a blamed token's advantage is at most -rl_blame (0: never reinforced)
    rl_mode: str = "spread"  # rollouts: spread | confidence (MaskGIT; MaskFocus) | halton | stochastic (MaskGRPO)
    rl_k: int = 4  # scored steps when rl_steps is random or focus
    rl_micro_batch: int = 0  # rollouts per forward and backward when scoring (gradient accumulation; 0: all at once)
    rl_per_sample: bool = False  # focus: each sample's own k critical steps instead of the batch's
    clip_eps: float = 0.2
    beta: float = 0.01
    rl_eval_every: int = 0  # held-out accuracy (compare_eval_prompts samples) every this many updates; 0: off
    # the focus comparison (python compare.py): every variant from the pretrained weights
    compare_seeds: int = 3
    compare_updates: int = 0  # 0: rl_updates
    compare_eval_prompts: int = 200  # held-out samples for the accuracy curves (at most the evaluation's)
    compare_variants: str = ""  # comma-separated indices into compare.VARIANTS (0-4); empty: all (replay: 0-3)
    # the parallelism table: the evaluation at each step count, pretrained and RL model, in each of sweep_orders
    sweep_steps: str = ""  # comma-separated T, e.g. 4,6,8,12,16,32; empty: off
    # shortcut (shortcut.py), trained after RL on the final model's trajectories; sc_iters 0 skips it
    sc_steps: int = 32  # sampling steps of the shortcut's trajectories and table (MIGM-Shortcut's MaskGIT runs: 32)
    sc_budgets: str = "10,12"  # base-model calls per image in the table (the paper's MaskGIT runs: 12 of 32)
    sc_eval: int = 256  # evaluation samples the table scores (an even spread of the evaluation set)
    sc_prompts: int = 256  # trajectories (x2 with CFG)
    sc_iters: int = 1500
    sc_batch: int = 64
    sc_lr: float = 1e-4  # AdamW, as the paper
    sc_width: int = 0  # 0: d_model / 2
    sc_unroll: int = 1  # training chains up to this many shortcut steps (1: the paper's one-step target)
    sc_uncond: str = "cache"  # cache: shortcut steps move only the conditional CFG branch | shortcut: both (paper)
    sc_bench_batch: int = 64  # the table samples and times in batches of this size
    snapshot_secs: float = 60.0  # pretraining and RL snapshot their progress this often (a crash loses at most that)

    @property
    def n_tokens(self):  # image tokens: one per patch
        return (self.image_size // self.patch) ** 2


DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}
# --help shows each field's comment in the Config source above
FIELD_NOTES = dict(re.findall(r"^    (\w+): \w+ = [^#\n]*# *(.*)$", inspect.getsource(Config), re.M))

PRESETS = {
    "tiny": dict(fit_images=300, d_model=32, n_layers=1, n_heads=2, pretrain_steps=30,
                 batch_size=16, warmup=5, sample_steps=4, eval_prompts=8, eval_samples=2, eval_batch=16,
                 rl_updates=3, rl_eval_every=2, rl_prompts=2, group_size=4, rl_k=2, compare_seeds=2,
                 compare_eval_prompts=8,
                 sc_steps=8, sc_budgets="2,4", sc_eval=16, sc_prompts=16, sc_iters=20, sc_batch=16, sc_bench_batch=8),
    "cpu": dict(),  # the Config defaults: 64 tokens, 12 steps; the whole run about 13 minutes on 2 cores
    # MaskGIT's 16x16 = 256-token grid (64x64 px, 4x4 patches; objects of 16-24 px span 4x4 to 6x6 tokens) in
    # T = 12 steps: 21 tokens per step. Lengths by FLOP count, for at most 5 minutes on one H200 at an assumed 25%
    # of 790 bf16 TFLOP/s = 198 TFLOP/s. A forward pass of one sequence (8 words + 256 tokens, d 256, 6 layers:
    # 4.78M matmul weights) costs 2 x 4.78M x 264 + attention 4 x 6 x 264^2 x 256 = 2.95 GFLOP; training 3x, 8.9.
    #   pretraining 2000 steps x 256 x 8.9 = 4.56 PFLOP; evaluations 2 x 1600 images x 12 steps x 2 (CFG) x 2.95
    #   = 0.23; RL (replay) 200 updates x 256 rollouts x (12 x 2 x 2.95 sampling + 4 scored steps x 2 CFG branches
    #   x (8.9 policy + 2.95 reference)) = 8.46; held-out 9 x 400 x 12 x 2 x 2.95 = 0.25; shortcut: collection
    #   1024 x 32 x 2 x 2.95 and the table's 9 rows (110 base calls per image, x2 CFG) on 1600 images = 1.23. In
    #   all 14.7 PFLOP: 74 s at 198 TFLOP/s (5 minutes holds down to 6% MFU).
    "gpu": dict(image_size=64, patch=4, grid=4, codebook_size=256, d_model=256, n_layers=6, n_heads=8,
                pretrain_steps=2000, batch_size=256, lr=1.5e-3, warmup=100, eval_samples=4, eval_batch=1600,
                rl_updates=200, rl_prompts=32, rl_micro_batch=64, rl_eval_every=25, compare_updates=100,
                compare_eval_prompts=400,
                sc_eval=1600, sc_prompts=1024, sc_iters=3000, sc_bench_batch=400),
}

CHOICES = {"preset": ["auto", *PRESETS], "device": ["auto", "cpu", "cuda", "mps"],
           "rl_estimator": ["remask", "replay", "maskgrpo"], "rl_steps": ["all", "random", "focus"],
           "rl_tokens": ["all", "critical"], "rl_routing": ["off", "entropy"], "rl_credit": ["sample", "object"],
           "rl_reward": ["partial", "exact"], "rl_schedule": ["constant", "cosine"],
           "rl_mode": ["stochastic", "confidence", "spread", "halton"], "order": ["confidence", "spread", "halton"],
           "sc_uncond": ["cache", "shortcut"], "rl_pool": ["token", "step"]}

# the range every numeric field must lie in, checked before any work starts (a zero batch once trained nothing)
RANGES = [
    ("at least 1", lambda v: v >= 1, "patch fit_images d_model n_layers n_heads pretrain_steps batch_size eval_samples "
     "eval_batch rl_prompts compare_seeds compare_eval_prompts sc_steps sc_eval sc_batch sc_bench_batch sc_unroll"),
    # group_size: advantages compare the samples of a prompt; sc_prompts: a training and a validation split
    ("at least 2", lambda v: v >= 2, "codebook_size group_size sc_prompts"),
    ("at least 0", lambda v: v >= 0, "warmup weight_decay cfg_scale choice_temperature rl_updates rl_mu "
     "rl_micro_batch beta rl_blame rl_eval_every "
     "compare_updates sc_iters sc_width snapshot_secs"),
    ("above 0", lambda v: v > 0, "lr temperature rl_lr clip_eps sc_lr"),
    ("in [0, 1)", lambda v: 0 <= v < 1, "prompt_drop rl_mask_floor"),
]


def out_of_range(name, value):
    """'must be ...' when value breaks the RANGES rule of Config field `name`, else None."""
    for what, ok, names in RANGES:
        if name in names.split() and not ok(value):
            return f"must be {what}, got {value}"


flag = lambda name: "--" + name.replace("_", "-")  # a Config field's command-line flag: rl_lr -> --rl-lr


def parse_config(argv=None, description=None):
    """Config from the command line: --preset picks defaults, every other field is a flag that overrides."""
    ap = argparse.ArgumentParser(description=description or __doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        opt, note = flag(f.name), FIELD_NOTES.get(f.name, "").replace("%", "%%")
        if f.type is bool:
            ap.add_argument(opt, action="store_true", help=f"(default off) {note}")
        elif f.name in CHOICES:
            ap.add_argument(opt, choices=CHOICES[f.name], default=None, help=note)
        else:
            default = f"default {f.default} (or the preset's)"
            ap.add_argument(opt, type=f.type, default=None, help=f"{default}: {note}" if note else default)
    args = ap.parse_args(argv)  # unknown or ill-typed flags exit here with argparse's message
    if (preset := args.preset or "auto") == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
        print(f"preset: {preset} ({'CUDA found' if preset == 'gpu' else 'no CUDA: the CPU preset'})")
    cfg = Config(preset=preset, **PRESETS[preset])
    # None: flag not given; False: a store_true flag not given (0 and 0.0 are real values)
    overrides = {k: v for k, v in vars(args).items() if v is not None and v is not False and k != "preset"}
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.rl_mu == 0:  # the estimator's own number of inner updates: MaskGRPO's 6 for images, else one
        cfg = dataclasses.replace(cfg, rl_mu=6 if cfg.rl_estimator == "maskgrpo" else 1)
    for f in dataclasses.fields(cfg):
        if problem := out_of_range(f.name, getattr(cfg, f.name)):
            ap.error(f"{flag(f.name)} {problem}")
    try:  # room for an object of a legal size on the grid; the step counts of the parallelism table
        world.object_sizes(cfg.image_size, cfg.grid)
        sweep = sweep_list(cfg.sweep_steps)
    except ValueError as e:
        ap.error(f"--sweep-steps must be comma-separated step counts like 4,6,8,12, got {cfg.sweep_steps!r}"
                 if "invalid literal" in str(e) else f"--image-size {cfg.image_size} with --grid {cfg.grid}: {e}")
    try:
        budgets = sweep_list(cfg.sc_budgets)
    except ValueError:
        ap.error(f"--sc-budgets must be comma-separated numbers of base calls like 8,10,12, got {cfg.sc_budgets!r}")
    N, T, w = cfg.n_tokens, cfg.sample_steps, cfg.sc_width or cfg.d_model // 2  # w 0: half the width, as Shortcut
    for bad, message in [  # checked now, not after minutes of pretraining
        (cfg.image_size % cfg.patch, f"--image-size {cfg.image_size} must be a multiple of --patch {cfg.patch}"),
        (cfg.d_model % cfg.n_heads, f"--d-model {cfg.d_model} must be a multiple of --n-heads {cfg.n_heads}"),
        (w % shortcut.N_HEADS, f"the shortcut's width {w} must be a multiple of its {shortcut.N_HEADS} heads; "
                               "set --sc-width"),
        ((cfg.d_model // cfg.n_heads) % 4, "the head size d_model / n_heads must be a multiple of 4 (2-D RoPE: row and "
                                           f"column pairs), got {cfg.d_model} / {cfg.n_heads}"),
        (cfg.eval_prompts < 4 or cfg.eval_prompts % 4, "--eval-prompts must be a positive multiple of 4 (balanced over "
                                                       f"the four categories), got {cfg.eval_prompts}"),
        (not 1 <= T <= N, f"--sample-steps must be between 1 and the {N} image tokens, got {T}"),
        (any(not 1 <= t <= N for t in sweep), f"--sweep-steps must each be between 1 and the {N} image tokens, "
                                              f"got {cfg.sweep_steps}"),
        (cfg.sc_steps > N or not budgets or any(not 1 <= b <= cfg.sc_steps for b in budgets),
         f"--sc-steps must be at most the {N} image tokens and --sc-budgets each between 1 and --sc-steps "
         f"{cfg.sc_steps}, got {cfg.sc_steps} and {cfg.sc_budgets!r}"),
        (cfg.sc_eval > cfg.eval_prompts * cfg.eval_samples, f"--sc-eval must be at most the evaluation's "
                                                             f"{cfg.eval_prompts * cfg.eval_samples} samples"),
        (cfg.compare_eval_prompts > cfg.eval_prompts * cfg.eval_samples,
         f"--compare-eval-prompts must be at most the evaluation's {cfg.eval_prompts * cfg.eval_samples} samples"),
        (not 1 <= cfg.rl_k <= T, f"--rl-k must be between 1 and --sample-steps {T}, got {cfg.rl_k}"),
        (cfg.rl_routing == "entropy" and cfg.rl_estimator == "replay", "--rl-routing entropy changes the rollout "
                                                                       "policy; use it with --rl-estimator remask")]:
        if bad:
            ap.error(message)
    return cfg


def sweep_orders(cfg):
    """The parallelism table's commit orders: the evaluation's (when neither of the two), confidence, Halton."""
    both = ["confidence", "halton"]
    return both if cfg.order in both else [cfg.order] + both


def sweep_list(spec):
    """'4,6,8' -> [4, 6, 8] (sorted, no repeats); '' -> []."""
    return sorted({int(x) for x in spec.split(",") if x.strip()})


def model_config(cfg):
    return ModelConfig(codebook_size=cfg.codebook_size, n_tokens=cfg.n_tokens,
                       d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)


if __name__ == "__main__":
    # python config.py --preset gpu --rl-lr 3e-5: print the settings train.py would run with
    import runs
    cfg = parse_config(None, "Print the Config train.py would run with for these flags.")
    for f in dataclasses.fields(cfg):
        print(f"{f.name:>22} = {getattr(cfg, f.name)!r}")
    print(f"{'device':>22} -> {runs.pick_device(cfg.device)}")
