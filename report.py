"""
What train.py leaves in out/: report.md (tables), metrics.jsonl and the pictures, drawn with Pillow only.

  save_grid         images with captions (each prompt and its verdict)
  draw_curves       line plots (reward per update, accuracy curves of the compared variants)
  trajectory_strip  one unmasking trajectory: each step's x0 image, its similarity to the final
                    image, the critical steps marked
  log_metrics       one strict-JSON line of out/metrics.jsonl (a NaN is written as null)
  write_report      out/report.md from the stage results train.py collected
  write_assets      the README's pictures (python report.py --out out --assets)
"""

import json
import math
import os
import shutil
import sys
import textwrap

import torch

import dist
import rewards
import runs
import world

COLORS = [(40, 80, 220), (220, 60, 40), (40, 160, 60), (200, 140, 0), (140, 60, 180), (0, 150, 160)]


@dist.main_only
def save_grid(images, captions, path, cell=128, cols=8):
    """A PNG grid: each image upscaled (nearest) to `cell` pixels with its caption beneath."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default()
    rows = math.ceil(len(images) / cols)
    wrapped = [textwrap.wrap(cap, width=cell // 6) for cap in captions]  # about 6 px per character
    line_h, n_lines = 11, max([4] + [len(lines) for lines in wrapped])  # room for the longest caption
    out = Image.new("RGB", (cols * cell, rows * (cell + line_h * n_lines)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    arr = (images.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, (im, cap, lines) in enumerate(zip(arr, captions, wrapped)):
        x, y = (i % cols) * cell, (i // cols) * (cell + line_h * n_lines)
        out.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (x, y))
        color = (0, 140, 0) if "[ok]" in cap else (200, 0, 0) if "[x]" in cap else (0, 0, 0)
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell + j * line_h), line, fill=color, font=font)
    out.save(path)


def verdict_captions(prompts, rewards):
    return [f"{p} [{'ok' if r >= 1.0 else 'x'}] {r:.2f}" for p, r in zip(prompts, rewards.tolist())]


@dist.main_only
def draw_curves(series, path, title, w=560, h=280, pad=34, smooth=None):
    """series: {name: [(x, y), ...]} -> a line plot with a legend. smooth {name: n}: that series is drawn
    raw in grey under its running mean over n points."""
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (w, h + 14 * len(series)), "white")
    d = ImageDraw.Draw(im)
    pts = [p for s in series.values() for p in s]
    x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts) or 1
    y_lo, y_hi = min(p[1] for p in pts), max(p[1] for p in pts)
    y_hi = y_hi if y_hi > y_lo else y_lo + 1e-9
    xy = lambda x, y: (pad + (w - 2 * pad) * (x - x_lo) / max(x_hi - x_lo, 1e-9),
                       h - pad - (h - 2 * pad) * (y - y_lo) / (y_hi - y_lo))
    for k, (name, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        n = (smooth or {}).get(name, 1)
        if n > 1:
            d.line([xy(*p) for p in s], fill=(190, 190, 190), width=1)
            windows = [s[max(0, i - n + 1):i + 1] for i in range(len(s))]
            ys = [sum(q[1] for q in w) / len(w) for w in windows]
            s = [(p[0], y) for p, y in zip(s, ys)]
        if len(s) > 1:
            d.line([xy(*p) for p in s], fill=color, width=2)
        for p in s:
            x, y = xy(*p)
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        d.text((pad, h + 14 * k), name, fill=color)
    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    d.text((pad, 8), f"{title}  (x {x_lo:g}..{x_hi:g}, y {y_lo:.3f}..{y_hi:.3f})", fill="black")
    im.save(path)


@dist.main_only
def trajectory_strip(images, sims, marked, path, cell=96):
    """images (T, 3, H, W): each step's x0; sims (T,): cosine to the final image; marked: critical steps."""
    from PIL import Image, ImageDraw
    T = len(images)
    out = Image.new("RGB", (T * cell, cell + 30), "white")
    d = ImageDraw.Draw(out)
    arr = (images.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for t in range(T):
        out.paste(Image.fromarray(arr[t]).resize((cell - 4, cell - 4), Image.NEAREST), (t * cell + 2, 2))
        if t in marked:
            d.rectangle([t * cell, 0, (t + 1) * cell - 1, cell - 1], outline=(230, 40, 40), width=3)
        d.text((t * cell + 4, cell + 2), f"t={t}{' *' if t in marked else ''}", fill="black")
        d.text((t * cell + 4, cell + 15), f"s={float(sims[t]):.2f}", fill="black")
    out.save(path)


def _strict(v):
    """A NaN or inf (a skipped RL update's reward, say) becomes null: json.dumps would write a
    bare NaN, which strict JSON readers (jq, JSON.parse) refuse."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    return v


@dist.main_only
def log_metrics(cfg, **row):
    """One line of out/metrics.jsonl per call (train.py logs every stage's numbers); every line is strict JSON."""
    with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(_strict(row), allow_nan=False) + "\n")


@dist.main_only
def save_gif(frames, path, scale=4, ms=250):
    """frames: list of (3, H, W) images in [0, 1] -> animated GIF (nearest-neighbour upscaled)."""
    from PIL import Image
    ims = []
    for f in frames:
        a = (f.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        im = Image.fromarray(a)
        ims.append(im.resize((im.width * scale, im.height * scale), Image.NEAREST))
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=ms, loop=0)


def trajectory_frames(vq, traj, i=0, marked=(), masked_grey=0.3):
    """Frames of sample i: all-masked, then the committed tokens after each step t (still-masked spots
    grey, so a committed black background patch shows; the last frame is the final image). The frame
    after each step in `marked` (e.g. focus.py's critical steps) gets a red border."""
    g, p = math.isqrt(traj.final.shape[1]), vq.patch
    after = [*traj.states[:, i], traj.final[i]]  # (N,) each: all masked, then the state after step t
    frames = []
    for j, state in enumerate(after):
        known = state != vq.mask_id  # (N,)
        img = vq.decode(torch.where(known, state, 0)[None])[0]  # (3, H, W)
        keep = known.view(g, g).repeat_interleave(p, 0).repeat_interleave(p, 1)  # (H, W)
        img = torch.where(keep, img, torch.full_like(img, masked_grey))
        if j - 1 in marked:  # the frame right after a marked step: a 1-pixel red border
            red = torch.tensor([0.9, 0.15, 0.15], device=img.device)[:, None, None]
            img[:, [0, -1], :], img[:, :, [0, -1]] = red, red
        frames.append(img)
    return frames


def acc_row(name, ev):
    acc = ev["accuracy"]
    return (f"| {name} | {acc['overall']:.1%} | " + " | ".join(f"{acc[c]:.1%}" for c in world.CATEGORIES)
            + f" | {ev['reward']:.3f} | {ev['quality']:.3f} |")


def failure_rows(evals):
    """The failure modes every evaluation in `evals` counted (one made before a mode existed lacks it)."""
    return [m for m in evals[0]["failures"]["single"] if all(m in ev["failures"]["single"] for ev in evals)]


def failure_table(evals):
    """Why samples fail, as a share of each category's samples: a row per rewards.FAILURES mode, each
    cell 'pretrained -> after RL' (one share per evaluation given)."""
    lines = ["| why | " + " | ".join(world.CATEGORIES) + " |", "| --- |" + " --- |" * len(world.CATEGORIES)]
    for m in failure_rows(evals):
        cells = [" -> ".join(f"{ev['failures'][c][m]:.0%}" for ev in evals) for c in world.CATEGORIES]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def compare_table(ck):
    """Rows of the focus comparison: the seeds' mean accuracy at each checkpoint; at the end its standard error
    over every scored sample, sqrt(p (1 - p) / (n x seeds)), and the seeds' spread (std)."""
    names = list(dict.fromkeys(r["variant"] for r in ck["runs"]))
    marks = [u for u, _ in ck["runs"][0]["curve"]]
    lines = ["| variant | " + " | ".join(f"acc @ {u} upd" for u in marks) + " | final (mean +- SE) | seed std "
             "| RL s / run | fwd-equiv / update (scoring only) |",
             "| --- | " + " | ".join("---" for _ in marks) + " | --- | --- | --- | --- |"]
    for name in names:
        runs = [r for r in ck["runs"] if r["variant"] == name]
        accs = torch.tensor([[a for _, a in r["curve"]] for r in runs])  # (seeds, marks)
        fin, n = accs[:, -1], ck.get("n_eval", 0) * len(runs)
        p, std = fin.mean().item(), fin.std().item() if len(fin) > 1 else 0.0
        se = f" +- {(p * (1 - p) / n) ** 0.5:.1%}" if n else ""  # (comparisons saved before n_eval have none)
        lines.append(f"| {name} | " + " | ".join(f"{a:.1%}" for a in accs.mean(0).tolist())
                     + f" | {p:.1%}{se} | {std:.1%} | {sum(r['seconds'] for r in runs) / len(runs):.0f} "
                     f"| {runs[0]['fwd']:.0f} ({runs[0]['score_fwd']:.0f}) |")
    return lines


def speed_table_lines(table):
    """The shortcut stage's rows as markdown (per-category columns when the rows have them)."""
    cats = [c for c in world.CATEGORIES if c in table[0]]
    ops = "ops" in table[0]  # tables made before the ops column have none
    head = (f"| sampler | steps | base calls | ms / image | speed-up | {'ops | ' * ops}accuracy | "
            + "".join(f"{c} | " for c in cats))
    lines = [head + "quality FD |", "| --- " * (7 + ops + len(cats)) + "|"]
    at = lambda r: " at " + ",".join(map(str, r["calls"])) if "calls" in r else ""  # calls not evenly spaced
    return lines + [f"| {r['kind']} | {r['steps']} | {r['budget']}{at(r)} | {r['ms_per_image']:.2f} | "
                    f"{r['speedup']:.2f}x " + (f"| {r['ops']} " if ops else "") + f"| {r['accuracy']:.1%} | "
                    + "".join(f"{r[c]:.1%} | " for c in cats) + f"{r['quality']:.3f} |" for r in table]


def pretrain_flops(cfg, pre, dev):
    """Pretraining's model TFLOP/s (bench.forward_flops x 3 per scene, scene rendering in the time), and its MFU
    against bench.PEAK_FLOPS on CUDA."""
    from bench import PEAK_FLOPS, forward_flops
    from config import model_config
    flops = 3 * forward_flops(model_config(cfg)) * cfg.batch_size * cfg.pretrain_steps / max(pre["seconds"], 1e-9)
    mfu = f" (MFU {flops / PEAK_FLOPS:.1%} of {PEAK_FLOPS / 1e12:.0f})" if torch.device(dev).type == "cuda" else ""
    return f"{flops / 1e12:.3g}{mfu}"


def mse_text(mse):
    """The codebook's reconstruction MSE as read: the grid-aligned world has few distinct patches, so often 0."""
    return "0 (lossless)" if mse == 0 else f"{mse:.1e}"


@dist.main_only
def write_report(cfg, dev, vq_mse, res):
    pre = res["pretrain"]
    vq = mse_text(vq_mse)
    lines = [
        "# Report", "",
        f"Preset `{cfg.preset}` on `{dev}`; command: `python {' '.join(sys.argv)}`", "",
        "## Pretraining", "",
        "| image | tokens | codebook K | VQ MSE | params | steps x batch | loss first -> last | pretrain s | "
        "model TFLOP/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {cfg.image_size}x{cfg.image_size} | {cfg.n_tokens} | {cfg.codebook_size} | {vq} "
        f"| {pre['params'] / 1e6:.2f}M | {cfg.pretrain_steps} x {cfg.batch_size} | {pre['first_loss']:.2f} -> "
        f"{pre['last_loss']:.2f} | {pre['seconds']:.0f} | {pretrain_flops(cfg, pre, dev)} |", "",
        f"Evaluation: {cfg.eval_prompts} prompts x {cfg.eval_samples} samples, T={cfg.sample_steps}, "
        f"CFG {cfg.cfg_scale}, temperature {cfg.temperature}, {cfg.order} order; accuracy = reward 1.0.", "",
        "| model | overall | " + " | ".join(world.CATEGORIES) + " | mean reward | quality FD (lower is better) |",
        "| --- | --- | " + " | ".join("---" for _ in world.CATEGORIES) + " | --- | --- |",
        acc_row("pretrained", res["eval_pretrain"]),
    ]
    if "eval_rl" in res:
        rl = res["rl"]
        maskgrpo = cfg.rl_estimator == "maskgrpo"
        steps = "none (MaskGRPO's mask ratios)" if maskgrpo else f"`{cfg.rl_steps}` (k={cfg.rl_k})"
        lines += [acc_row("after RL", res["eval_rl"]), "", "## RL (GRPO)", "",
                  f"{cfg.rl_updates} updates x {cfg.rl_prompts} prompts x G={cfg.group_size}, estimator "
                  f"`{cfg.rl_estimator}`, rollouts `{cfg.rl_mode}`, steps {steps}, tokens "
                  f"`{cfg.rl_tokens}`, routing `{cfg.rl_routing}`, credit `{cfg.rl_credit}`, mu={cfg.rl_mu}, "
                  f"lr {cfg.rl_lr}, beta {cfg.beta}: "
                  f"{rl['seconds']:.0f}s. Reward curve: `rl_reward.png`; before/after samples "
                  f"(same prompts and seeds): `samples_pretrain.png`, `samples_rl.png`."]
        if rl.get("curve"):
            lines += ["", f"Held-out accuracy during RL ({cfg.compare_eval_prompts} samples of the evaluation set; "
                      "also in `rl_reward.png`): " + ", ".join(f"{u}: {a:.1%}" for u, a in rl["curve"])]
    evals = [res[k] for k in ("eval_pretrain", "eval_rl") if k in res and "failures" in res[k]]
    if evals:  # (evaluations made before failure_modes existed have no 'failures')
        lines += ["", "## Why samples fail (rewards.failure_modes)", "",
                  "Share of each category's evaluation samples, " + " -> ".join(
                      "pretrained" if ev is res["eval_pretrain"] else "after RL" for ev in evals)
                  + "; each failed sample counts once, under the first reason that applies (top to bottom)"
                  + ("; the last row counts every sample that holds a mismatched part, whatever came first"
                     if rewards.ANY_MISMATCH in failure_rows(evals) else "") + ".", ""]
        lines += failure_table(evals)
    if "sweep" in res:
        rows = res["sweep"]["rows"]
        fails = [m for m in rows[0]["failures"] if m != "ok"]
        lines += ["", "## Parallel decoding: quality against the step count", "",
                  f"The evaluation above (same prompts and seeds) at each step count T: {cfg.n_tokens} tokens in T "
                  "steps. Failure columns: share of all samples, first reason that applies; the last, any "
                  "mismatched part.", "",
                  "| model | order | T | tokens / step | accuracy | " + " | ".join(world.CATEGORIES)
                  + " | quality FD | " + " | ".join(fails) + " |",
                  "| --- " * (6 + len(world.CATEGORIES) + len(fails)) + "|"]
        lines += [f"| {r['model']} | {r.get('order', 'confidence')} | {r['steps']} | {r['tokens_per_step']:.1f} | "
                  f"{r['accuracy']['overall']:.1%} | "
                  + " | ".join(f"{r['accuracy'][c]:.1%}" for c in world.CATEGORIES) + f" | {r['quality']:.3f} | "
                  + " | ".join(f"{r['failures'][m]:.1%}" for m in fails) + " |" for r in rows]
    if "compare" in res:
        ck = res["compare"]
        lines += ["", "## Critical steps and tokens (focus.py), from the same pretrained weights", "",
                  f"{ck['updates']} updates per run, {ck['seeds']} seeds, accuracy on {ck['n_eval']} samples of the "
                  f"evaluation set, k={cfg.rl_k} of T={cfg.sample_steps}, credit `{cfg.rl_credit}`. Curves: "
                  "`compare.png`; one trajectory with its critical steps: `critical_steps.png`.", ""]
        lines += compare_table(ck)
    if "shortcut" in res:
        sc = res["shortcut"]
        steps = runs.shortcut_setting(sc, cfg)[0]
        moves = "".join(f" One step at T={t} moves the features by {c:.3g} (the cache's error) and the shortcut misses "
                        f"by {a:.3g}." for t, (a, c) in sorted(sc.get("moves", {}).items()))
        ops = (" and {} aten ops to its {} (about one GPU kernel launch each; the table's ops column counts a whole "
               "sampler's)".format(*sc["ops"]) if "ops" in sc else "")  # checkpoints made before ops have none
        lines += ["", "## Shortcut (shortcut.py)", "",
                  f"Shortcut: {sc['params'] / 1e6:.3f}M parameters vs {pre['params'] / 1e6:.2f}M; one step costs "
                  f"{sc['flops_ratio']:.1%} of a base-model step in FLOPs{ops}. Trained {cfg.sc_iters} iterations on "
                  f"{cfg.sc_prompts} trajectories of {steps} steps (x2 CFG branches) in {sc['train_seconds']:.0f}s; "
                  f"validation MSE {sc['log'][-1]['val']:.3g} vs the cache's {sc['log'][-1]['val_cache']:.3g}."
                  + moves, "",
                  "| steps ahead | shortcut MSE | cache MSE |", "| --- | --- | --- |"]
        lines += [f"| {d} | {a:.3g} | {b:.3g} |" for d, (a, b) in sc["distance"].items()]
        bench_dev = sc.get("device", str(dev))  # where the latencies were measured
        clock = "CUDA events" if bench_dev.startswith("cuda") else "wall clock"
        lines += ["", f"{sc['n_eval']} samples of the evaluation set (an even spread; the same seeds for every row), "
                  f"sampled in batches of {min(sc['bench_batch'], sc['n_eval'])} on `{bench_dev}`, every row taking "
                  f"each batch in turn; latency per image ({clock}) "
                  + ("over the full batches after the first" if sc["n_eval"] >= 2 * sc["bench_batch"]
                     else "of the one batch, sampled a second time after the first") + f". Speed-up "
                  f"against vanilla {steps} steps.", "",
                  *speed_table_lines(sc["table"])]
    if "wall" in res:  # train.py's own run (report.py rebuilding from checkpoints has no clock)
        lines += ["", "## Wall time", "", "Seconds of the command above, stage by stage (a stage it found finished: "
                  "about 0): " + ", ".join(f"{k} {v:.0f}" for k, v in res["wall"].items()) + "."]
    with open(os.path.join(cfg.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


@torch.no_grad()
def asset_prompts(eval_prompts, samples, per_category=4):
    """The pictures' prompts, by a fixed rule: the first per_category of each category in the evaluation set (its
    prompts come category by category, each `samples` times), one of each category first."""
    n = len(eval_prompts) // len(world.CATEGORIES)  # entries a category (fewer prompts than asked: all of them)
    return [eval_prompts[c * n + j * samples] for j in range(min(per_category, n // samples))
            for c in range(len(world.CATEGORIES))]


def write_assets(out, folder, dev, seed=0):
    """The README's pictures from a finished run `out`, on asset_prompts: unmasking.gif (four prompts decoded side
    by side by the RL model), before_after_rl.png (the same prompts and seed, pretrained above, after RL below; how
    many pass printed), shortcut.png (vanilla sc_steps steps above, the shortcut at the table's largest budget
    below, if the run trained one) and a copy of the run's rl_reward.png."""
    from model import encode_prompts
    from sample import sample
    from shortcut import sample_with_shortcut
    os.makedirs(folder, exist_ok=True)
    model, vq, cfg = runs.load_generator(out, dev)
    prompts = asset_prompts(runs.load_checkpoint(os.path.join(out, "data.pt"))["eval_prompts"], cfg.eval_samples)
    ids = encode_prompts(prompts).to(dev)
    kw = dict(cfg_scale=cfg.cfg_scale, temperature=cfg.temperature, choice_temperature=cfg.choice_temperature,
              mode=cfg.order)
    if os.path.exists(curve := os.path.join(out, "rl_reward.png")):
        shutil.copyfile(curve, os.path.join(folder, "rl_reward.png"))
    gen = lambda: torch.Generator(dev).manual_seed(seed)
    _, traj = sample(model, ids[:4], cfg.sample_steps, generator=gen(), record=True, **kw)
    frames = [torch.cat([f for pair in zip(fs, [torch.ones_like(fs[0][:, :, :2])] * 4) for f in pair][:-1], 2)
              for fs in zip(*(trajectory_frames(vq, traj, i) for i in range(4)))]  # (3, H, 4W + 6) per step
    save_gif(frames + frames[-1:] * 4, os.path.join(folder, "unmasking.gif"), ms=300)  # hold the last frame
    def two_rows(path, rows):  # {name: images (P, 3, H, W)} -> one grid, two rows a name, captions with verdicts
        images = torch.cat(list(rows.values()))
        r = rewards.reward(images, prompts * len(rows))
        names = [name for name in rows for _ in prompts]
        captions = [f"{n}: {v}" for n, v in zip(names, verdict_captions(prompts * len(rows), r))]
        save_grid(images, captions, os.path.join(folder, path), cols=len(prompts) // 2)
        print(f"{path}: " + ", ".join(f"{name} {int(k)} of {len(prompts)} pass"
                                      for name, k in zip(rows, (r >= 1).view(len(rows), -1).sum(1).tolist())))

    pretrained = runs.load_generator(out, dev, pretrained=True)[0]
    rl = vq.decode(sample(model, ids, cfg.sample_steps, generator=gen(), **kw))
    two_rows("before_after_rl.png", {"pretrained": vq.decode(sample(pretrained, ids, cfg.sample_steps,
                                                                     generator=gen(), **kw)), "after RL": rl})
    if os.path.exists(os.path.join(out, "shortcut.pt")):
        net, ck = runs.load_shortcut(out, dev)
        steps, budget, order = runs.shortcut_setting(ck, cfg)
        kw = dict(kw, mode=order)  # as the shortcut's table sampled
        slow = vq.decode(sample(model, ids, steps, generator=gen(), **kw))
        fast = vq.decode(sample_with_shortcut(model, net, ids, steps, budget, generator=gen(),
                                              uncond=ck["config"]["sc_uncond"], **kw))
        two_rows("shortcut.png", {f"vanilla {steps} steps": slow, f"shortcut {budget} base calls": fast})


if __name__ == "__main__":
    # python report.py --out out: rewrite out/report.md from the stage checkpoints already there
    # python report.py --out out --assets: and draw the README's pictures into assets/
    import argparse

    import config
    ap = argparse.ArgumentParser(description="Rewrite OUT/report.md from the stage checkpoints in OUT; with "
                                             "--assets, also draw the README's pictures into assets/.")
    ap.add_argument("--out", default="out")
    ap.add_argument("--assets", nargs="?", const="assets", default=None, metavar="FOLDER",
                    help="write the README's pictures here (default folder: assets)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    res, fields = {}, {}
    for stage in ["pretrain", "eval_pretrain", "rl", "eval_rl", "sweep", "shortcut", "compare"]:
        path = os.path.join(args.out, f"{stage}.pt")
        if os.path.exists(path):
            res[stage] = runs.load_checkpoint(path)
            fields.update(runs.config_of(res[stage]))
    if "eval_pretrain" not in res:
        raise SystemExit(f"{args.out} has no finished pretraining and evaluation (pretrain.pt, eval_pretrain.pt)")
    cfg = config.Config(**fields, out=args.out, preset="(from checkpoints)")
    vq_mse = runs.load_checkpoint(os.path.join(args.out, "codebook.pt"))["mse"]
    write_report(cfg, torch.device("cpu"), vq_mse, res)
    print(f"wrote {args.out}/report.md")
    if args.assets:
        write_assets(args.out, args.assets, runs.pick_device(args.device))
        print(f"wrote {args.assets}/: " + ", ".join(sorted(os.listdir(args.assets))))
