"""
The comparison MaskFocus and GCPO invite: RL variants side by side, every one from the same pretrained
weights, with the same seeds and the same number of updates. Each variant is one setting of train.rl_update's
three switches:

  all steps                            GRPO on every sampling step (the expensive baseline)
  random k                             k random steps per update
  focus k                              MaskFocus's k critical steps (largest information gain)
  focus k + critical tokens            and GCPO's 30% critical tokens with dynamic weights
  focus k + critical tokens + routing  and MaskFocus's entropy-routed rollouts (it changes the rollout policy,
                                       so it needs --rl-estimator remask; left out under replay, the default)

    python compare.py --out DIR --rl-updates 0 --sc-iters 0 --compare-updates 60
        # train.py's stages (finished ones skipped), then every variant x --compare-seeds 3, 60 updates each
    python compare.py --out DIR --compare-variants 1,2      # some of them (indices into VARIANTS)

Every other flag is train.py's. Writes the table into report.md (report.compare_table), the accuracy curves to
compare.png and one trajectory with its critical steps to critical_steps.png.
"""

import os
import time

from tqdm import tqdm

import focus
import report
from config import DEFAULTS, flag, model_config, parse_config
from runs import drop_progress, load_checkpoint, load_progress, load_stage, save_progress, save_stage
from model import MaskedTransformer
from train import (example_trajectory, held_out_accuracy, held_out_prompts, launch, rl_lr_at, rl_setup, rl_update,
                   set_lr)

SWITCHES = ("rl_steps", "rl_tokens", "rl_routing")  # the Config fields of train.rl_update's three switches
VARIANTS = [  # name, then a value for each of SWITCHES
    ("all steps", "all", "all", "off"),
    ("random k", "random", "all", "off"),
    ("focus k", "focus", "all", "off"),
    ("focus k + critical tokens", "focus", "critical", "off"),
    ("focus k + critical tokens + routing", "focus", "critical", "entropy"),
]


def pick_variants(spec, estimator="remask"):
    """'' -> every variant the estimator can run (entropy routing changes the rollout policy, so it needs the
    remask estimator: under replay it is left out); '1,2' -> those (indices), refusing anything else, routing
    under replay included, with a clear message."""
    runnable = lambda v: estimator != "replay" or v[3] == "off"
    if not spec:
        return [v for v in VARIANTS if runnable(v)]
    try:
        picked = [VARIANTS[int(i)] for i in spec.split(",")]
    except (ValueError, IndexError):
        raise SystemExit(f"--compare-variants takes comma-separated indices 0-{len(VARIANTS) - 1}, got {spec!r}")
    if not all(map(runnable, picked)):
        raise SystemExit("entropy routing needs --rl-estimator remask; with replay pass e.g. "
                         "--compare-variants 0,1,2,3")
    return picked


def stage_compare(cfg, vq, data, dev):
    """focus.py's comparison: every variant from the same pretrained weights, same seeds, same updates.
    Each finished (variant, seed) run is saved to compare.partial.pt at once, so a rerun after a crash or
    a time limit goes on from there (every run starts from the same weights and seeds: nothing changes)."""
    if (ck := load_stage(cfg, "compare")) is not None:
        return ck
    runs = snap["runs"] if (snap := load_progress(cfg, "compare")) is not None else []
    pre_state = load_checkpoint(os.path.join(cfg.out, "pretrain.pt"))["state"]
    n_up = cfg.compare_updates or cfg.rl_updates
    marks = sorted({round(n_up * f) for f in (1 / 3, 2 / 3, 1)})
    prompts = held_out_prompts(cfg, data)
    model = MaskedTransformer(model_config(cfg)).to(dev)
    model.compile_sampling = cfg.compile
    acc = lambda m: held_out_accuracy(cfg, m, vq, prompts, dev)
    model.load_state_dict(pre_state)
    acc0 = acc(model)
    variants = pick_variants(cfg.compare_variants, cfg.rl_estimator)
    for seed in range(cfg.compare_seeds):  # seed-major: a run stopped early still compares every variant
        for name, steps, tokens, routing in variants:
            if any(r["variant"] == name and r["seed"] == seed for r in runs):
                continue
            model.load_state_dict(pre_state)
            ref, opt, g_prompts, g = rl_setup(cfg, model, dev, cfg.seed + 1000 * (seed + 1))
            curve, seconds, fwd, score_fwd, skipped = [(0, acc0)], 0.0, 0, 0, 0
            for u in tqdm(range(n_up), desc=f"{name} (seed {seed})", leave=False):
                t0 = time.time()
                set_lr(opt, rl_lr_at(u, cfg, n_up))
                s = rl_update(cfg, model, ref, opt, vq, g_prompts, g, steps, tokens, routing)
                seconds += time.time() - t0
                fwd, score_fwd = fwd + s["rollout_fwd"] + s["score_fwd"], score_fwd + s["score_fwd"]
                skipped += s["skipped"]  # kept in the run's record (metrics.jsonl)
                if u + 1 in marks:
                    curve.append((u + 1, acc(model)))
            runs.append(dict(variant=name, seed=seed, curve=curve, seconds=seconds, fwd=fwd / n_up,
                             score_fwd=score_fwd / n_up, skipped=skipped))
            save_progress(cfg, "compare", len(runs), "runs", runs=runs)
            report.log_metrics(cfg, stage="compare", **runs[-1])
            print(f"[compare] {name} seed {seed}: " + " ".join(f"{u}:{a:.1%}" for u, a in curve) + f" ({seconds:.0f}s)")
    series = {}
    for name, *_ in variants:
        rs = [r["curve"] for r in runs if r["variant"] == name]
        series[name] = [(u, sum(c[i][1] for c in rs) / len(rs)) for i, (u, _) in enumerate(rs[0])]
    report.draw_curves(series, os.path.join(cfg.out, "compare.png"), "held-out accuracy vs RL updates (seed mean)")
    write_critical_steps(cfg, model, vq, dev)
    ck = save_stage(cfg, "compare", dict(runs=runs, updates=n_up, seeds=cfg.compare_seeds, n_eval=len(prompts)))
    drop_progress(cfg, "compare")
    return ck


def overridden(cfg):
    """The flags of the three switches given a value of their own: every variant sets them itself, so such a
    value reaches only train.py's RL stage (a run given --rl-steps all compares the same variants as without)."""
    return [flag(k) for k in SWITCHES if getattr(cfg, k) != DEFAULTS[k]]


def write_critical_steps(cfg, model, vq, dev):
    """One trajectory: each step's x0, its similarity to the final image, the critical steps (by this sample)."""
    traj, marked = example_trajectory(cfg, model, vq, dev)
    sims = focus.step_similarity(traj, vq.codes)[0]  # (T,)
    report.trajectory_strip(vq.decode(traj.x0[:, 0]).cpu(), sims, marked, os.path.join(cfg.out, "critical_steps.png"))


def main(argv=None):
    """train.py's stages, then the comparison; its settings are checked before any work starts."""
    cfg = parse_config(argv, __doc__)
    variants = pick_variants(cfg.compare_variants, cfg.rl_estimator)  # a bad list stops the run now, not later
    if names := overridden(cfg):
        print(f"[compare] {', '.join(names)}: each variant sets its own; the value given is train.py's RL stage's only")
    if len(variants) < len(VARIANTS) and not cfg.compare_variants:
        print("[compare] the replay estimator: entropy routing (it needs --rl-estimator remask) is left out")
    if not (cfg.compare_updates or cfg.rl_updates):
        raise SystemExit("the comparison needs --compare-updates (or --rl-updates) above 0")
    if cfg.rl_estimator == "maskgrpo":
        raise SystemExit("the comparison varies the scored steps, and --rl-estimator maskgrpo scores none; "
                         "use remask or replay")
    return launch(cfg, {"compare": stage_compare})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # finished stages and runs are on disk: say so, no traceback
        raise SystemExit("\ninterrupted: the same command goes on from the last finished stage or run")
