"""Data-parallel training with torch.distributed (gloo, CPU, two processes on 127.0.0.1)
and DistributedDataParallel around a model using dropout_ext.nn.Dropout."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import dropout_ext
    from dropout_ext import functional as F

    torch.manual_seed(0)  # identical initial weights on both ranks
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), dropout_ext.nn.Dropout(0.2),
                                torch.nn.Linear(64, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    x = torch.randn(512, 8, generator=g)
    y = x @ w + 0.01 * torch.randn(512, 1, generator=g)
    shard = slice(rank * 256, (rank + 1) * 256)
    torch.manual_seed(1000 + rank)  # per-rank dropout seeding (README: data parallel)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(ddp(x[shard]), y[shard])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    mask_none = (F.dropout(torch.ones(4096), 0.5) != 0).to(torch.uint8)
    mask_seed = (F.dropout(torch.ones(4096), 0.5, seed=42) != 0).to(torch.uint8)
    gathered = {}
    for name, t in (("params", params), ("mask_none", mask_none), ("mask_seed", mask_seed)):
        out = [torch.empty_like(t) for _ in range(WORLD)]
        dist.all_gather(out, t)
        gathered[name] = out
    if rank == 0:
        torch.save({"losses": losses, **gathered}, result_path)
    dist.barrier()
    dist.destroy_process_group()
    # Leave at once: a gloo worker thread still being torn down by C++ static destructors
    # at interpreter exit aborted one run ("terminate called without an active exception").
    os._exit(0)


def test_ddp_training_with_dropout(tmp_path):
    path = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    r = torch.load(path)
    first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
    assert last < 0.5 * first, (first, last)  # the loss falls
    assert torch.equal(r["params"][0], r["params"][1])  # replicas stay equal
    assert not torch.equal(r["mask_none"][0], r["mask_none"][1])  # per-rank seeds: masks differ
    assert torch.equal(r["mask_seed"][0], r["mask_seed"][1])  # same seed=: same mask
