import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import compare
import config
import report
import rewards
import runs
import train
from model import MaskedTransformer, ModelConfig, encode_prompts, maskgit_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pretraining_loss_falls():
    torch.manual_seed(0)
    m = MaskedTransformer(ModelConfig(codebook_size=8, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    ids = encode_prompts(["a red circle", "a blue square"])
    data = torch.tensor([[1] * 8 + [2] * 8, [3] * 16])  # a learnable mapping prompt -> tokens
    losses = []
    for _ in range(60):
        loss = maskgit_loss(m, data, ids, g)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_loss_only_on_masked_tokens():
    torch.manual_seed(0)
    m = MaskedTransformer(ModelConfig(codebook_size=8, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    tok = torch.randint(0, 8, (4, 16))
    ids = encode_prompts(["a red circle"] * 4)
    # the same masks (same generator) with different values at unmasked spots: unmasked values are
    # inputs, not targets, so only a change at a masked spot may change the loss's targets
    l1 = maskgit_loss(m, tok, ids, torch.Generator().manual_seed(1), prompt_drop=0)
    g = torch.Generator().manual_seed(1)
    u = torch.rand(4, generator=g)
    rank = torch.rand(4, 16, generator=g).argsort(1).argsort(1)
    masked = rank < (torch.cos(torch.pi / 2 * u) * 16).ceil().clamp(1, 16)[:, None]
    assert masked.any() and (~masked).any()
    logits = m(torch.where(masked, torch.full_like(tok, 8), tok), ids)
    want = torch.nn.functional.cross_entropy(logits[masked], tok[masked])
    assert torch.allclose(l1, want, atol=1e-5)


def test_tiny_end_to_end_resume_and_mismatch(tmp_path, capsys):
    out = str(tmp_path / "run")
    res = train.main(["--preset", "tiny", "--out", out, "--sweep-steps", "2,4"])
    for f in ["data.pt", "codebook.pt", "pretrain.pt", "eval_pretrain.pt", "report.md", "metrics.jsonl",
              "samples_pretrain.png", "trajectory.gif", "rl.pt", "eval_rl.pt", "samples_rl.png", "rl_reward.png",
              "shortcut.pt"]:
        assert os.path.exists(os.path.join(out, f)), f
    acc = res["eval_pretrain"]["accuracy"]
    assert set(acc) == {"overall", "single", "two", "counting", "position"}
    assert len(res["rl"]["log"]) == 3 and all(0 <= x["frac_reward_zero_std"] <= 1 for x in res["rl"]["log"])
    kinds = [(r["kind"], r["steps"], r["budget"]) for r in res["shortcut"]["table"]]
    assert kinds == train.shortcut_configs(res["cfg"])  # at sc_steps 8; the evaluation's T=4 at the end
    assert ("vanilla", 8, 8) in kinds and ("shortcut", 8, 2) in kinds and ("cache", 8, 4) in kinds
    assert ("shortcut", 4, 2) in kinds and res["shortcut"]["table"][0]["speedup"] == 1.0
    assert set(res["shortcut"]["moves"]) == {4, 8}  # how far one step moves the features at T=4 and T=8
    for r in res["shortcut"]["table"]:  # per-category accuracy too; the evaluation set is balanced
        assert abs(r["accuracy"] - sum(r[c] for c in ("single", "two", "counting", "position")) / 4) < 1e-6
    for ev in (res["eval_pretrain"], res["eval_rl"]):  # every sample has exactly one verdict: ok or a reason
        assert set(ev["failures"]) == set(acc)
        for c, shares in ev["failures"].items():
            assert abs(sum(shares[m] for m in rewards.FAILURES) - 1) < 1e-6
            assert abs(shares["ok"] - ev["accuracy"][c]) < 1e-6
            assert shares["mismatched parts"] <= shares[rewards.ANY_MISMATCH] <= 1 - shares["ok"]
    text = open(os.path.join(out, "report.md")).read()
    assert "## Shortcut" in text and "| colours and shapes swapped |" in text
    # the parallelism table: both models in the evaluation's order (spread), confidence and Halton at each step
    # count; at the evaluation's T and order it is the evaluation itself
    sweep = res["sweep"]["rows"]
    assert [(r["model"], r["order"], r["steps"]) for r in sweep] == [
        (m, o, t) for m in ("pretrained", "after RL") for o in ("spread", "confidence", "halton") for t in (2, 4)]
    assert sweep[3]["accuracy"] != sweep[5]["accuracy"] or sweep[3]["quality"] != sweep[5]["quality"]
    for r, ev in ((sweep[1], res["eval_pretrain"]), (sweep[7], res["eval_rl"])):
        assert r["accuracy"] == ev["accuracy"] and abs(r["quality"] - ev["quality"]) < 1e-9
        assert abs(sum(r["failures"][m] for m in rewards.FAILURES) - 1) < 1e-6 and r["tokens_per_step"] == 16
    assert "## Parallel decoding: quality against the step count" in text and "| after RL | halton | 2 | 32.0 |" in text
    sc_ops, base_ops = res["shortcut"]["ops"]  # one step of each, and each sampler's ops in the table
    assert f"and {sc_ops} aten ops to its {base_ops}" in text and "| speed-up | ops | accuracy |" in text
    mtime = os.path.getmtime(os.path.join(out, "pretrain.pt"))
    capsys.readouterr()
    train.main(["--preset", "tiny", "--out", out, "--sweep-steps", "2,4"])  # resume: every stage skipped
    assert "[pretrain] checkpoint matches the config: skipped" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "pretrain.pt")) == mtime
    with pytest.raises(SystemExit, match="lr: checkpoint 0.003 vs now 0.002"):
        train.main(["--preset", "tiny", "--out", out, "--lr", "0.002"])
    assert not any(f.endswith(".tmp") for f in os.listdir(out))
    # the focus comparison from the same checkpoints: every variant the replay estimator can run (routing needs
    # remask), one update, one seed
    res = compare.main(["--preset", "tiny", "--out", out, "--compare-seeds", "1", "--compare-updates", "1"])
    variant_runs = res["compare"]["runs"]
    assert [r["variant"] for r in variant_runs] == [v[0] for v in compare.VARIANTS[:4]]
    assert "entropy routing (it needs --rl-estimator remask) is left out" in capsys.readouterr().out
    assert [v[0] for v in compare.pick_variants("", "remask")] == [v[0] for v in compare.VARIANTS]
    assert all(len(r["curve"]) == 2 and r["curve"][0][0] == 0 for r in variant_runs)  # before and after the update
    assert variant_runs[0]["score_fwd"] > variant_runs[1]["score_fwd"]  # all steps costs more than k of them
    for f in ["compare.png", "critical_steps.png"]:
        assert os.path.exists(os.path.join(out, f)), f
    assert [v[0] for v in compare.pick_variants("1,2")] == ["random k", "focus k"]
    # the switches the variants set themselves: a value given for them is named, as reaching the RL stage only
    assert compare.overridden(config.parse_config(["--preset", "tiny"])) == []
    given = config.parse_config(["--preset", "tiny", "--rl-steps", "all", "--rl-tokens", "critical"])
    assert compare.overridden(given) == ["--rl-steps", "--rl-tokens"]
    # focus.py's demo on the finished run: the steps it picks, binding and relations
    demo = subprocess.run([sys.executable, "focus.py", "--ckpt", out, "--batches", "1", "--prompts", "2",
                           "--group", "2", "--k", "2", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr
    share = float(re.search(r"binding on the empty board .*?: ([\d.]+)% of the mass", demo.stdout).group(1))
    assert 0 <= share <= 100 and os.path.exists(os.path.join(out, "focus_demo.png"))
    # probe.py: the same binding line, and the relations line, with the measures in range
    pr = subprocess.run([sys.executable, "probe.py", "--ckpt", out, "--pretrained", "--device", "cpu"], cwd=ROOT,
                        capture_output=True, text=True)
    assert pr.returncode == 0, pr.stderr
    m = re.search(r"relations on the empty board \((\d+) prompts.*?in ([\d.]+)% of prompts.*?; ([\d.]+)% of "
                  r"the two objects' mass", pr.stdout)
    assert m and int(m.group(1)) > 0 and all(0 <= float(v) <= 100 for v in m.groups()[1:]), pr.stdout
    with pytest.raises(SystemExit, match="indices 0-4"):
        compare.pick_variants("1,9")
    with pytest.raises(SystemExit, match="entropy routing needs --rl-estimator remask"):
        compare.pick_variants("1,4", "replay")
    # README's "from Python" block, on this run (tiny: the shortcut at its 8 steps with 2 base calls)
    block = re.search(r"```python\n(.*?)```", open(os.path.join(ROOT, "README.md")).read(), re.S).group(1)
    res = subprocess.run([sys.executable, "-c", block.replace('"out"', repr(out))], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("tensor([") and lines[2].startswith("tensor(["), res.stdout
    assert lines[1].startswith("['") and lines[1].count("'") == 16, res.stdout  # 8 verdicts from FAILURES
    # the demos read the run's own settings: sampling from eval_pretrain.pt, RL from rl.pt (tiny: T=4, k=2)
    cfg = runs.load_generator(out, torch.device("cpu"))[2]
    assert (cfg.sample_steps, cfg.rl_k, cfg.d_model) == (4, 2, config.PRESETS["tiny"]["d_model"])
    # sample.py's two uses: a PNG and a GIF of the unmasking (T + 1 frames), and the images/s benchmark
    # (--out names the folder as train.py does; --ckpt is the same flag)
    res = subprocess.run([sys.executable, "sample.py", "--out", out, "--n", "2", "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "accuracy" in res.stdout, res.stderr
    from PIL import Image
    assert Image.open(os.path.join(out, "sample.png")).size[0] > 0
    assert Image.open(os.path.join(out, "sample.gif")).n_frames == cfg.sample_steps + 1
    res = subprocess.run([sys.executable, "sample.py", "--ckpt", out, "--bench", "--batch", "4", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and re.search(r"batch 4, T=4, cfg [\d.]+: [\d,.]+ images/s", res.stdout), res.stdout
    assert re.search(r"; \d+ aten ops per sampling call\)", res.stdout), res.stdout
    # grpo.py's demo: a few updates on the finished run (the RL weights against the pretrained reference)
    res = subprocess.run([sys.executable, "grpo.py", "--ckpt", out, "--updates", "2", "--prompts", "2", "--group", "2",
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and len(re.findall(r"update \d: reward [\d.]+ acc", res.stdout)) == 2, res.stderr
    # shortcut.py's two uses: the stored speed table, and one prompt sampled both ways into shortcut.png
    res = subprocess.run([sys.executable, "shortcut.py", "--ckpt", out], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "| shortcut | 4 | 2 |" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "shortcut.py", "--ckpt", out, "--prompt", "a red circle", "--n", "3",
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert re.search(r"vanilla, 8 steps: accuracy \d+% on 3 samples, [\d.]+ ms/image", res.stdout), res.stdout
    # tiny trains the shortcut at 8 steps with budgets 2 and 4: the demo's default is the largest
    assert re.search(r"shortcut, 4 base calls: accuracy \d+% on 3 samples, [\d.]+ ms/image", res.stdout), res.stdout
    assert Image.open(os.path.join(out, "shortcut.png")).size == (3 * 128, 2 * (128 + 44))  # 3 columns, 2 rows
    # the demos refuse bad input with a usage line, not a traceback (and --steps 0 is not "the default")
    for script, bad, msg in [("sample.py", ["--steps", "0"], "--steps must be between 1 and the 64 image tokens"),
                             ("sample.py", ["--prompt", "a purple circle"], "unknown colour 'purple'"),
                             ("sample.py", ["--temperature", "0"], "--temperature must be above 0, got 0.0"),
                             ("sample.py", ["--cfg-scale", "-1"], "--cfg-scale must be at least 0, got -1.0"),
                             ("focus.py", ["--k", "9"], "need 1 <= --k <= --steps"),
                             ("grpo.py", ["--group", "1"], "--group at least 2"),
                             ("shortcut.py", ["--prompt", "a red circle", "--budget", "9"],
                              "--budget must be between 1 and the shortcut's 8 sampling steps")]:
        res = subprocess.run([sys.executable, script, "--ckpt", out, "--device", "cpu", *bad], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, (script, bad, res.stderr)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(config.Config)
                                   if f.type in (int, float) and f.name != "seed"])
def test_every_numeric_flag_refuses_a_negative_value(field, capsys):
    """A value out of range stops the run at once, naming the flag (a batch size of 0 once ran to the end)."""
    flag = "--" + field.replace("_", "-")
    with pytest.raises(SystemExit) as e:
        config.parse_config(["--preset", "tiny", flag, "-1"])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_a_bad_variant_list_stops_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="--compare-variants takes comma-separated indices 0-4, got '9'"):
        compare.main(["--preset", "tiny", "--out", str(tmp_path / "run"), "--compare-variants", "9"])
    assert not (tmp_path / "run").exists()


def test_an_out_path_that_is_a_file_stops_with_a_message(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot use it as the output folder"):
        train.main(["--preset", "tiny", "--out", str(tmp_path / "run")])


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(["--no-such-flag", "1"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse_config(["--lr", "fast"])
    assert "invalid float value: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse_config(["--preset", "huge"])
    with pytest.raises(SystemExit):
        config.parse_config(["--rl-estimator", "magic"])
    for bad, msg in [(["--sample-steps", "65"], "between 1 and the 64 image tokens"),
                     (["--sweep-steps", "4,x"], "--sweep-steps must be comma-separated step counts"),
                     (["--sweep-steps", "4,65"], "--sweep-steps must each be between 1 and the 64 image tokens"),
                     (["--sample-steps", "12", "--rl-k", "13"], "--rl-k must be between 1 and --sample-steps 12"),
                     (["--group-size", "1"], "at least 2"),
                     (["--rl-mask-floor", "1"], "--rl-mask-floor must be in [0, 1)"),
                     (["--rl-routing", "entropy", "--rl-estimator", "replay"], "use it with --rl-estimator remask"),
                     (["--sc-budgets", "8,x"], "--sc-budgets must be comma-separated numbers of base calls"),
                     (["--sc-budgets", "8,40"], "--sc-budgets each between 1 and --sc-steps 32"),
                     (["--sc-steps", "65"], "--sc-steps must be at most the 64 image tokens"),
                     (["--sc-eval", "801"], "--sc-eval must be at most the evaluation's 800 samples"),
                     (["--compare-eval-prompts", "801"], "--compare-eval-prompts must be at most the evaluation's 800"),
                     (["--order", "random"], "invalid choice: 'random'")]:
        with pytest.raises(SystemExit):
            config.parse_config(["--preset", "cpu", *bad])
        assert msg in capsys.readouterr().err
    for bad, msg in [(["--d-model", "36", "--n-heads", "8"], "--d-model 36 must be a multiple of --n-heads 8"),
                     (["--d-model", "36", "--n-heads", "4"], "must be a multiple of its 4 heads; set --sc-width"),
                     (["--grid", "7"], "no object size between 8 and 12 pixels is a multiple of grid=7"),
                     (["--d-model", "24", "--n-heads", "4"], "head size d_model / n_heads must be a multiple of 4"),
                     (["--eval-prompts", "0"], "--eval-prompts must be a positive multiple of 4")]:
        with pytest.raises(SystemExit):
            config.parse_config(["--preset", "cpu", *bad])
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --help explains each flag with its comment in Config
        config.parse_config(["--help"])
    assert "default 8 (or the preset's): samples per prompt (G)" in " ".join(capsys.readouterr().out.split())
    cfg = config.parse_config(["--preset", "tiny", "--pretrain-steps", "7", "--rl-updates", "0", "--beta", "0"])
    assert cfg.rl_updates == 0 and cfg.beta == 0.0  # zero is a value, not "flag absent"
    assert cfg.pretrain_steps == 7 and cfg.d_model == config.PRESETS["tiny"]["d_model"]


def test_demos_on_a_folder_without_a_run_say_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="codebook.pt is missing: run `python train.py --out"):
        runs.load_generator(str(tmp_path), torch.device("cpu"))
    (tmp_path / "codebook.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="pretrain.pt is missing"):
        runs.load_generator(str(tmp_path), torch.device("cpu"))
    out = subprocess.run([sys.executable, "shortcut.py", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 1 and "shortcut.pt is missing" in out.stderr and "Traceback" not in out.stderr


def test_a_device_that_is_not_there_is_refused_with_a_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name, said in [("cuda", "CUDA is not available"), ("mps", "MPS (Apple GPU) is not available")]:
        with pytest.raises(SystemExit, match=re.escape(said)):
            runs.pick_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match="there are 1 CUDA devices"):
        runs.pick_device("cuda:1")
    assert runs.pick_device("cuda:0") == torch.device("cuda:0") and runs.pick_device("cpu").type == "cpu"
    assert runs.pick_device("auto") == torch.device("cuda")  # autodetect (CUDA patched in above): cuda first...
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runs.pick_device(None) == torch.device("mps")  # ...then mps...
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runs.pick_device("auto") == torch.device("cpu")  # ...then the cpu


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_says_how_to_go_on_without_a_traceback(tmp_path):
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    # SIGINT back to its default in the child: a shell that starts the tests in the background (`cmd &`) sets it
    # to ignored, the child inherits that, and Python then never raises KeyboardInterrupt (seen: a 60 s timeout)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    with open(log, "w") as err:  # a file, not a pipe: nothing blocks however much tqdm writes
        p = subprocess.Popen([sys.executable, "train.py", "--preset", "tiny", "--out", str(out), "--pretrain-steps",
                              "100000"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=default_sigint)
        metrics = out / "metrics.jsonl"
        for _ in range(1200):  # wait (up to 2 min) until a pretraining step is logged: the loop is running
            if p.poll() is not None or (metrics.exists() and '"pretrain"' in metrics.read_text()):
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    said = log.read_text()
    assert p.returncode == 1 and "interrupted: the same command goes on" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert (out / "codebook.pt").exists()


def test_state_dict_is_a_copy():
    m = MaskedTransformer(ModelConfig(codebook_size=8, n_tokens=16, d_model=32, n_layers=1, n_heads=2))
    sd = runs.state_dict(m)
    with torch.no_grad():
        m.head.weight.add_(1.0)  # training after the snapshot must not change the snapshot
    assert not torch.equal(sd["head.weight"], m.head.weight)


def test_metrics_lines_are_strict_json_even_with_a_nan(tmp_path):
    cfg = config.Config(out=str(tmp_path))
    report.log_metrics(cfg, stage="rl", reward=float("nan"), kl=0.5, curve=[(1, float("inf")), (2, 0.25)])

    def refuse(name):  # strict JSON has no NaN/Infinity: a reader such as jq would fail here
        raise ValueError(name)
    line = open(os.path.join(tmp_path, "metrics.jsonl")).read()
    row = json.loads(line, parse_constant=refuse)
    assert row == {"stage": "rl", "reward": None, "kl": 0.5, "curve": [[1, None], [2, 0.25]]}


def test_tiny_pipeline_under_bf16_autocast(tmp_path, monkeypatch):
    """The CUDA path autocasts to bf16; CPU bf16 autocast stands in for it, so dtype mix-ups (bf16
    features meeting float32 weights, bf16 logits in the sampler) fail here rather than on a GPU."""
    import model
    import sample
    import shortcut
    used = []

    def bf16(device):
        used.append(str(device))
        return torch.autocast("cpu", dtype=torch.bfloat16)
    for m in (model, sample, shortcut, train):
        monkeypatch.setattr(m, "autocast", bf16)
    res = compare.main(["--preset", "tiny", "--out", str(tmp_path / "bf16"), "--compare-seeds", "1",
                      "--compare-variants", "1,3"])
    assert used and 0 <= res["eval_rl"]["accuracy"]["overall"] <= 1
    assert all(r["kind"] in ("vanilla", "cache", "shortcut") for r in res["shortcut"]["table"])


def test_compile_gives_the_eager_run_and_plain_checkpoints(tmp_path):
    """--compile: pretraining's forward and every sampling loop (evaluation, RL rollouts, the shortcut's table)
    through torch.compile. On the CPU the compiled float32 graphs agree with eager to rounding, so the same
    seeds give the same tokens; the checkpoints hold the plain model's keys (no _orig_mod.)."""
    res = {}
    for mode in ("eager", "compiled"):
        res[mode] = train.main(["--preset", "tiny", "--out", str(tmp_path / mode), "--rl-updates", "2"]
                               + ["--compile"] * (mode == "compiled"))
    eager, comp = res["eager"], res["compiled"]
    assert comp["pretrain"]["last_loss"] == pytest.approx(eager["pretrain"]["last_loss"], abs=1e-4)
    for stage in ("eval_pretrain", "eval_rl"):  # the same tokens: the same reward for every sample
        assert torch.equal(comp[stage]["rewards"], eager[stage]["rewards"]), stage
    assert [r["reward"] for r in comp["rl"]["log"]] == [r["reward"] for r in eager["rl"]["log"]]
    assert [r["accuracy"] for r in comp["shortcut"]["table"]] == [r["accuracy"] for r in eager["shortcut"]["table"]]
    for name in ("pretrain", "rl"):
        plain, compiled = (runs.load_checkpoint(str(tmp_path / m / f"{name}.pt"))["state"] for m in res)
        assert list(compiled) == list(plain) and not any("_orig_mod" in k for k in compiled)
        assert all(torch.allclose(compiled[k], plain[k], atol=1e-4) for k in plain)


def test_compare_resumes_after_a_crash(tmp_path, monkeypatch, capsys):
    """A crash in the second run of the comparison keeps the first run; the rerun does only the rest and
    matches an uninterrupted comparison."""
    args = ["--preset", "tiny", "--rl-updates", "0", "--sc-iters", "0", "--compare-seeds", "2",
            "--compare-updates", "1", "--compare-variants", "1,2"]
    whole = compare.main(args + ["--out", str(tmp_path / "whole")])["compare"]["runs"]
    out = str(tmp_path / "crash")
    real, calls = compare.rl_update, []

    def crash_on_second_run(*a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*a)
    monkeypatch.setattr(compare, "rl_update", crash_on_second_run)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compare.main(args + ["--out", out])
    assert not os.path.exists(os.path.join(out, "compare.pt"))
    kept = torch.load(os.path.join(out, "compare.partial.pt"), weights_only=False)["runs"]
    assert [r["variant"] for r in kept] == ["random k"]
    monkeypatch.setattr(compare, "rl_update", real)
    capsys.readouterr()
    runs = compare.main(args + ["--out", out])["compare"]["runs"]
    assert "[compare] resuming from its snapshot after 1 runs" in capsys.readouterr().out
    assert runs[0] == kept[0]  # seed-major, so a comparison stopped early still has every variant:
    assert [(r["variant"], r["seed"]) for r in runs] == [("random k", 0), ("focus k", 0), ("random k", 1),
                                                         ("focus k", 1)]
    assert [r["curve"] for r in runs] == [r["curve"] for r in whole]  # the same numbers as without the crash
    assert not os.path.exists(os.path.join(out, "compare.partial.pt"))


def test_rl_held_out_curve_leaves_the_rl_result_unchanged(tmp_path, monkeypatch):
    """rl_eval_every samples with its own generator: the weights after RL are the same with or without it.
    Its evaluations are not RL's time: on train.py's clock each one here takes 1000 s, and RL's seconds stay below."""
    class Clock:  # train.py's time module, as it reads the clock
        offset = 0.0
        def time(self):
            return time.time() + self.offset
    clock, held_out = Clock(), train.held_out_accuracy
    def slow_held_out(*args):
        clock.offset += 1000.0
        return held_out(*args)
    monkeypatch.setattr(train, "time", clock)
    monkeypatch.setattr(train, "held_out_accuracy", slow_held_out)
    res = {}
    for every in (0, 1):
        res[every] = train.main(["--preset", "tiny", "--out", str(tmp_path / f"e{every}"), "--sc-iters", "0",
                                 "--rl-eval-every", str(every)])["rl"]
    assert res[0]["curve"] == [] and [u for u, _ in res[1]["curve"]] == [0, 1, 2, 3]
    assert all(0 <= a <= 1 for _, a in res[1]["curve"])
    for k, v in res[0]["state"].items():
        assert torch.equal(v, res[1]["state"][k]), k
    assert [x["reward"] for x in res[0]["log"]] == [x["reward"] for x in res[1]["log"]]
    assert clock.offset == 4000.0 and res[1]["seconds"] < 1000 and all(x["seconds"] < 1000 for x in res[1]["log"])


@pytest.mark.parametrize("stage, crash_at", [("pretrain", 17), ("rl", 2)])
def test_pretraining_and_rl_resume_from_a_snapshot(tmp_path, monkeypatch, capsys, stage, crash_at):
    """A crash mid-stage keeps its last snapshot (--snapshot-secs 0: after every step); the rerun goes on
    from there and ends with the same weights and logs as a run that never crashed."""
    args = ["--preset", "tiny", "--sc-iters", "0", "--snapshot-secs", "0"]
    whole = train.main(args + ["--out", str(tmp_path / "whole")])[stage]
    out = str(tmp_path / "crash")
    name = "maskgit_loss" if stage == "pretrain" else "rl_update"
    real, calls = getattr(train, name), []

    def crash(*a, **kw):
        calls.append(1)
        if len(calls) == crash_at + 1:
            raise RuntimeError("simulated crash")
        return real(*a, **kw)
    monkeypatch.setattr(train, name, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(args + ["--out", out])
    assert not os.path.exists(os.path.join(out, f"{stage}.pt"))
    assert torch.load(os.path.join(out, f"{stage}.partial.pt"), weights_only=False)["done"] == crash_at
    monkeypatch.setattr(train, name, real)
    capsys.readouterr()
    again = train.main(args + ["--out", out])[stage]
    unit = "steps" if stage == "pretrain" else "updates"
    assert f"[{stage}] resuming from its snapshot after {crash_at} {unit}" in capsys.readouterr().out
    for k, v in whole["state"].items():
        assert torch.equal(v, again["state"][k]), k
    if stage == "rl":
        assert [x["reward"] for x in again["log"]] == [x["reward"] for x in whole["log"]]
        assert again["curve"] == whole["curve"]
    else:
        assert again["last_loss"] == whole["last_loss"]
    assert not os.path.exists(os.path.join(out, f"{stage}.partial.pt"))


def test_a_checkpoint_older_than_a_field_matches_its_default(tmp_path):
    """A field added after a checkpoint was written counts as its default there (the old behaviour)."""
    cfg = config.parse_config(["--preset", "tiny", "--out", str(tmp_path)])
    ck = runs.save_stage(cfg, "rl", dict(state={}))
    del ck["config"]["rl_pool"]  # as written before --rl-pool existed
    runs.save_atomic(ck, str(tmp_path / "rl.pt"))
    assert runs.load_stage(cfg, "rl") is not None
    with pytest.raises(SystemExit, match="rl_pool: checkpoint 'token' vs now 'step'"):
        runs.load_stage(config.parse_config(["--preset", "tiny", "--out", str(tmp_path), "--rl-pool", "step"]), "rl")


def test_a_stage_scored_by_an_older_verifier_is_refused(tmp_path):
    """Numbers of the lax verifier (before rewards.VERSION existed) are never mixed with the exact one's: a scored
    stage's checkpoint without the version is refused, while pretraining, which no verifier touched, is reused."""
    cfg = config.parse_config(["--preset", "tiny", "--out", str(tmp_path)])
    for stage in ("pretrain", "eval_pretrain"):
        ck = runs.save_stage(cfg, stage, dict(state={}))
        assert ("verifier" in ck["config"]) == (stage == "eval_pretrain")
        ck["config"].pop("verifier", None)  # as written before the version was recorded
        runs.save_atomic(ck, str(tmp_path / f"{stage}.pt"))
    assert runs.load_stage(cfg, "pretrain") is not None
    with pytest.raises(SystemExit, match=f"verifier: checkpoint 1 vs now {rewards.VERSION}"):
        runs.load_stage(cfg, "eval_pretrain")
    assert set(runs.config_of(ck)) <= set(config.DEFAULTS)


def test_an_evaluation_from_before_the_order_field_counts_as_the_confidence_order(tmp_path):
    """An evaluation checkpoint without `order` sampled in MaskGIT's confidence order: it is not reused as the
    spread order's (the default), and a finished run's settings read back say so."""
    cfg = config.parse_config(["--preset", "tiny", "--out", str(tmp_path)])
    assert cfg.order == "spread"
    ck = runs.save_stage(cfg, "eval_pretrain", dict(state={}))
    ck["config"].pop("order")  # as written before the field existed
    runs.save_atomic(ck, str(tmp_path / "eval_pretrain.pt"))
    with pytest.raises(SystemExit, match="order: checkpoint 'confidence' vs now 'spread'"):
        runs.load_stage(cfg, "eval_pretrain")
    assert runs.config_of(ck)["order"] == "confidence"
    assert "order" not in runs.config_of(runs.save_stage(cfg, "pretrain", dict(state={})))  # no sampling there
    assert config.sweep_orders(cfg) == ["spread", "confidence", "halton"]
    assert config.sweep_orders(dataclasses.replace(cfg, order="halton")) == ["confidence", "halton"]


def test_maskgrpo_runs_at_its_own_mu_unless_told():
    """--rl-estimator maskgrpo without --rl-mu takes MaskGRPO's image settings (mu 6, m 0.6); the others one update."""
    parse = lambda *a: config.parse_config(["--preset", "tiny", *a])
    assert (parse("--rl-estimator", "maskgrpo").rl_mu, parse("--rl-estimator", "maskgrpo").rl_mask_floor) == (6, 0.6)
    assert parse("--rl-estimator", "maskgrpo", "--rl-mu", "2").rl_mu == 2
    assert parse().rl_mu == 1 and parse("--rl-estimator", "replay").rl_mu == 1


def test_rl_compute_counts_forward_equivalents_by_hand():
    # remask, k=4 of T=12, CFG on, mu 1: rollout 12 x 2; per scored step old + reference + (forward + backward) = 5
    cfg = dataclasses.replace(config.Config(), rl_mu=1, rl_estimator="remask")  # parse_config: 0 -> the estimator's
    assert train.rl_compute(cfg, 4) == dict(rollout_fwd=24, score_fwd=20)
    # replay recorded the old policy; per step the reference's two branches, then per inner update the null branch's
    # forward (no graph) and the conditional one's forward and backward: 2 + 4 mu; without CFG 1 + 3 mu
    replay = dataclasses.replace(cfg, rl_estimator="replay")
    assert train.rl_compute(replay, 4)["score_fwd"] == 4 * 6
    assert train.rl_compute(dataclasses.replace(replay, rl_mu=2), 4)["score_fwd"] == 4 * 10
    assert train.rl_compute(dataclasses.replace(replay, cfg_scale=0.0), 4) == dict(rollout_fwd=12, score_fwd=4 * 4)
    # MaskGRPO: no steps; 5 per inner iteration (its mask's old, reference, forward and backward), mu of them
    assert train.rl_compute(dataclasses.replace(cfg, rl_estimator="maskgrpo", rl_mu=3), 3)["score_fwd"] == 15


def test_rl_learning_rate_by_hand():
    """constant: rl_lr at every update; cosine: rl_lr at the first, half of it halfway, near 0 at the last."""
    cfg = dataclasses.replace(config.Config(), rl_lr=2e-4)
    assert [train.rl_lr_at(u, cfg, 60) for u in (0, 30, 59)] == [2e-4] * 3
    cos = dataclasses.replace(cfg, rl_schedule="cosine")
    assert train.rl_lr_at(0, cos, 60) == pytest.approx(2e-4) and train.rl_lr_at(30, cos, 60) == pytest.approx(1e-4)
    assert 0 < train.rl_lr_at(59, cos, 60) < 2e-4 * 1e-2
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    train.set_lr(opt, 3e-4)
    assert opt.param_groups[0]["lr"] == 3e-4


def test_rl_and_the_comparison_follow_the_rl_schedule(tmp_path, monkeypatch):
    """Each RL update, in train.py's stage and in compare.py's runs, steps at rl_lr_at's rate (cosine: falling)."""
    seen = {"train": [], "compare": []}
    def recording(name, update):
        def wrapped(cfg, model, ref, opt, *a):
            seen[name].append(opt.param_groups[0]["lr"])
            return update(cfg, model, ref, opt, *a)
        return wrapped
    monkeypatch.setattr(train, "rl_update", recording("train", train.rl_update))
    monkeypatch.setattr(compare, "rl_update", recording("compare", compare.rl_update))
    args = ["--preset", "tiny", "--out", str(tmp_path), "--sc-iters", "0", "--rl-schedule", "cosine", "--rl-lr", "1e-3"]
    compare.main(args + ["--compare-variants", "1", "--compare-seeds", "1", "--compare-updates", "4"])
    cfg = config.parse_config(args)
    assert seen["train"] == pytest.approx([train.rl_lr_at(u, cfg, 3) for u in range(3)])  # the tiny preset: 3 updates
    assert seen["compare"] == pytest.approx([train.rl_lr_at(u, cfg, 4) for u in range(4)])
    assert seen["compare"][0] == pytest.approx(1e-3) and seen["compare"] == sorted(seen["compare"], reverse=True)


@pytest.mark.parametrize("kind, want", [("partial", [1.0, 0.75, 0.5, 1.0]), ("exact", [1.0, 0.0, 0.0, 1.0])])
def test_the_rl_reward_is_partial_credit_or_exact(monkeypatch, kind, want):
    """--rl-reward exact hands GRPO 1 for a satisfied prompt and 0 otherwise (GenEval's binary reward); partial
    hands it the verifier's credit."""
    got = {}
    def fake_rl_step(model, ref, opt, prompt_ids, score, *a, **k):
        got["r"] = score(torch.zeros(4, 64, dtype=torch.long))
        return dict(scored_steps=1, skipped=0)
    monkeypatch.setattr(train.grpo, "rl_step", fake_rl_step)
    monkeypatch.setattr(train.rewards, "reward", lambda images, prompts: torch.tensor([1.0, 0.75, 0.5, 1.0]))
    vq = type("VQ", (), {"decode": lambda self, tok: torch.zeros(len(tok), 3, 32, 32)})()
    cfg = dataclasses.replace(config.Config(), rl_prompts=1, group_size=4, rl_reward=kind)
    model = MaskedTransformer(ModelConfig(d_model=16, n_layers=1, n_heads=2))
    train.rl_update(cfg, model, None, None, vq, torch.Generator().manual_seed(0), None, "all", "all", "off")
    assert got["r"].tolist() == want


def test_the_pictures_prompts_follow_a_fixed_rule():
    import report
    # 4 categories x 5 prompts x 2 samples, category by category: the first four prompts of each, one of each first
    prompts = [f"{c}{i}" for c in "STCP" for i in range(5) for _ in range(2)]
    assert report.asset_prompts(prompts, 2) == [f"{c}{i}" for i in range(4) for c in "STCP"]
    assert report.asset_prompts(prompts, 2, per_category=2) == ["S0", "T0", "C0", "P0", "S1", "T1", "C1", "P1"]
    two_each = [f"{c}{i}" for c in "STCP" for i in range(2) for _ in range(2)]  # fewer than four: all of them
    assert report.asset_prompts(two_each, 2) == ["S0", "T0", "C0", "P0", "S1", "T1", "C1", "P1"]


def test_held_out_samples_spread_over_the_evaluation_set():
    # 4 categories x 2 prompts x 2 samples: 4 samples are one per other prompt, 8 are one per prompt, 16 are all
    entries = [f"{c}{i}" for c in "STCP" for i in range(2) for _ in range(2)]
    held = lambda n: train.held_out_prompts(config.Config(compare_eval_prompts=n), {"eval_prompts": entries})
    assert held(4) == ["S0", "T0", "C0", "P0"]
    assert held(8) == ["S0", "S1", "T0", "T1", "C0", "C1", "P0", "P1"]
    assert held(16) == entries


def test_compare_table_gives_the_standard_error_over_every_sample_by_hand():
    run = lambda seed, final: dict(variant="focus k", seed=seed, curve=[(0, 0.2), (60, final)], seconds=10.0,
                                   fwd=100.0, score_fwd=40.0)
    row = report.compare_table(dict(runs=[run(0, 0.5), run(1, 0.3)], n_eval=100))[-1]
    # mean 0.4 over 2 x 100 samples: sqrt(0.4 * 0.6 / 200) = 3.46%; the seeds' std: sqrt(2 * 0.1^2 / 1) = 14.1%
    assert row == "| focus k | 20.0% | 40.0% | 40.0% +- 3.5% | 14.1% | 10 | 100 (40) |"
