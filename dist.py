"""
Data parallelism with torchrun: `torchrun --standalone --nproc_per_node=N train.py [flags]` runs every stage on
N processes (ranks), each with its share of the work; the gradients are averaged across ranks before every
optimiser step, so the weights stay the same on every rank. Without torchrun every function here is a no-op
and train.py runs in one process exactly as it would without this file.

  pretraining  each rank renders its own batch_size / N scenes; the loss is normalised by the masked tokens of
               the whole (global) batch, so the averaged gradient is one process's on the whole batch
  evaluation   each rank samples its share of the prompts; the images are gathered on every rank
  RL           each rank rolls out rl_prompts / N prompts, each group whole on one rank (advantages stay per
               group), against its own copy of the frozen reference; the loss is pooled over the scored tokens of
               the whole (global) batch, as for pretraining
  shortcut     each rank collects its share of the trajectories and trains on them; rank 0 times the table
Only rank 0 writes files (checkpoints, pictures, metrics, the report); every rank reads them to resume. The
global batch and the number of updates are those of one process, so N processes learn what one does, from
other random draws (each rank seeds its own): the figures are close, not equal.

Simplified versus DistributedDataParallel: one all_reduce of the flattened gradients after the backward
(DDP overlaps it with the backward, bucket by bucket). RL and the shortcut call the model's own methods
(sampling, embeddings) that the DDP wrapper hides, and RL accumulates micro-batches, so one explicit
all-reduce serves every stage. Mid-stage snapshots are off under torchrun (each rank's random generators
would need their own): a rerun skips finished stages and redoes an unfinished one.
"""

import datetime
import functools
import os
import sys

import torch
import torch.distributed as td
from tqdm import tqdm


def world():
    return td.get_world_size() if td.is_initialized() else 1


def rank():
    return td.get_rank() if td.is_initialized() else 0


def setup(dev):
    """Join torchrun's process group when there is one (WORLD_SIZE > 1): nccl for CUDA tensors, each rank on its
    own GPU (LOCAL_RANK), gloo for CPU ones (the codebook, logged numbers). -> the device this rank runs on."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    td.init_process_group("cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    if rank():  # one console, rank 0's: the others print nothing and draw no progress bars (errors still show)
        sys.stdout = open(os.devnull, "w")
        tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    return dev


def cleanup(wait=True):
    """Leave the process group; wait: after a barrier (gloo aborts a process whose peer closed its connection
    while it was still finishing its last collective)."""
    if td.is_initialized():
        if wait:
            td.barrier()
        td.destroy_process_group()


def main_only(fn):
    """A decorator: fn runs on rank 0 alone (it writes files); on the other ranks the call returns None."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if rank() == 0 else None
    return wrapper


def seed(s):
    """This rank's seed for a generator seeded s in one process: each rank draws its own, and no rank's stream is
    another seed's (the comparison's seeds step by 1000)."""
    return s + 1_000_003 * rank()


def share(n):
    """This rank's contiguous slice of n items (sizes differ by at most one)."""
    return slice(rank() * n // world(), (rank() + 1) * n // world())


def gather(x):
    """Every rank's tensor x (its share, in rank order), concatenated along dim 0 on every rank (on x's device)."""
    if world() == 1:
        return x
    parts = [None] * world()
    td.all_gather_object(parts, x.cpu())
    return torch.cat(parts).to(x.device)


def total(x):
    """The sum of tensor x over the ranks (a new tensor on every rank)."""
    x = x.clone()
    if world() > 1:
        td.all_reduce(x)
    return x


def mean_numbers(stats):
    """A dict of numbers averaged over the ranks (what the ranks log as one)."""
    if world() == 1:
        return stats
    keys = [k for k, v in stats.items() if isinstance(v, (int, float))]
    v = total(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)) / world()
    return dict(stats, **{k: type(stats[k])(x) for k, x in zip(keys, v.tolist())})  # ints (counts) stay ints


def broadcast(module):
    """Rank 0's weights and buffers on every rank (after a random init, or a fit that may differ in its last bits)."""
    if world() > 1:
        for t in [*module.parameters(), *module.buffers()]:
            td.broadcast(t.data, 0)


def sync_grads(params, finite=True):
    """Average the gradients over the ranks (a rank without one adds zero; one no rank has stays None, as in one
    process), and whether every rank's loss was finite (all skip the step together, or none does). The
    all-reduce DDP does, written out."""
    params = [p for p in params if p.requires_grad]
    if world() == 1:
        return finite
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flags = torch.tensor([p.grad is not None for p in params] + [not finite], dtype=grads[0].dtype,
                         device=grads[0].device)  # which gradients exist; the last: a non-finite loss
    flat = torch.cat([g.reshape(-1) for g in grads] + [flags])
    td.all_reduce(flat)
    grads, flags = torch.split(flat, [flat.numel() - flags.numel(), flags.numel()])
    for p, g, has in zip(params, torch.split(grads / world(), [p.numel() for p in params]), flags.tolist()):
        p.grad = g.view_as(p).to(p.dtype) if has else None
    return flags[-1].item() == 0
