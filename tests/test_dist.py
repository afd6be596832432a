"""Data parallelism (dist.py) on the CPU: two processes with gloo, as torchrun would start them."""
import contextlib
import io
import json
import os
import socket

import torch
import torch.multiprocessing as mp

import config
import dist
import train
from model import MaskedTransformer, maskgit_masks


def start(rank, world, port):
    """What torchrun puts in each process's environment."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(rank, world, port, argv, path):
    start(rank, world, port)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        res = train.main(argv)
    torch.save(dict(pretrain=res["pretrain"]["state"], rl=res["rl"]["state"], log=log.getvalue()), path.format(rank))


def test_tiny_run_on_two_processes_and_its_rerun(tmp_path):
    out, path = str(tmp_path / "run"), str(tmp_path / "rank{}.pt")
    argv = ["--preset", "tiny", "--device", "cpu", "--out", out]
    mp.spawn(run_train, args=(2, free_port(), argv, path), nprocs=2)  # raises if a rank fails
    r0, r1 = (torch.load(path.format(r)) for r in (0, 1))
    for stage in ("pretrain", "rl"):  # every rank ends each stage with the same weights
        assert r0[stage].keys() == r1[stage].keys()
        assert all(torch.equal(r0[stage][k], r1[stage][k]) for k in r0[stage]), stage
    assert not torch.equal(r0["pretrain"]["head.weight"], r0["rl"]["head.weight"])  # RL did move them
    assert r1["log"] == ""  # rank 1 prints nothing; rank 0 wrote every file, once
    assert "[pretrain] 0.02M parameters, 30 steps of batch 16 on cpu (8 on each of 2 processes)" in r0["log"]
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["stage"] for r in rows].count("eval_pretrain") == 1 and os.path.exists(os.path.join(out, "report.md"))
    assert len([r for r in rows if r["stage"] == "rl"]) == config.PRESETS["tiny"]["rl_updates"]
    made = os.path.getmtime(os.path.join(out, "rl.pt"))
    mp.spawn(run_train, args=(2, free_port(), argv, path), nprocs=2)  # the rerun skips every finished stage
    again = torch.load(path.format(0))
    for stage in ("pretrain", "rl", "shortcut"):
        assert f"[{stage}] checkpoint matches the config: skipped" in again["log"], again["log"]
    assert os.path.getmtime(os.path.join(out, "rl.pt")) == made
    assert all(torch.equal(again["rl"][k], r0["rl"][k]) for k in r0["rl"])


def tiny_setup():
    cfg = config.parse_config(["--preset", "tiny", "--device", "cpu"])
    torch.manual_seed(0)
    model = MaskedTransformer(config.model_config(cfg))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(cfg.codebook_size, (8, cfg.n_tokens), generator=g)
    ids = torch.randint(2, 20, (8, 8), generator=g)
    masked, drop = maskgit_masks(8, cfg.n_tokens, g, prompt_drop=0.3)
    return cfg, model, tokens, ids, masked, drop


def one_step(model, cfg, tokens, ids, masked, drop):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the update is the gradient itself
    loss = train.pretrain_step(cfg, model, opt, tokens, ids, (masked, drop), step=cfg.warmup)
    return {k: v.clone() for k, v in model.state_dict().items()}, loss


def half_step(rank, world, port, path):
    start(rank, world, port)
    torch.distributed.init_process_group("gloo")
    cfg, model, tokens, ids, masked, drop = tiny_setup()
    half = slice(rank * 4, rank * 4 + 4)  # this rank's half of the batch, and of its masks
    state, loss = one_step(model, cfg, tokens[half], ids[half], masked[half], drop[half])
    torch.save(dict(state=state, loss=dist.total(loss) / world), path.format(rank))
    dist.cleanup()


def test_one_step_on_two_half_batches_is_one_step_on_the_whole_batch(tmp_path):
    """The two halves mask different numbers of tokens (a per-rank mean would weigh them wrongly): the loss is
    normalised by the whole batch's count and the gradients averaged, so the step is one process's."""
    cfg, model, tokens, ids, masked, drop = tiny_setup()
    assert masked[:4].sum() != masked[4:].sum()  # what makes the normalisation matter
    whole, loss = one_step(model, cfg, tokens, ids, masked, drop)
    path = str(tmp_path / "half{}.pt")
    mp.spawn(half_step, args=(2, free_port(), path), nprocs=2)
    for r in (0, 1):
        got = torch.load(path.format(r))
        assert abs(got["loss"].item() - loss.item()) < 1e-5
        for k in whole:
            assert torch.allclose(got["state"][k], whole[k], atol=1e-6), (r, k)
    assert any(not torch.equal(whole[k], v) for k, v in tiny_setup()[1].state_dict().items())  # it did step
