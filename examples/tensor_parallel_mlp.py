"""Tensor parallelism that does not change the dropout masks.

A two-layer MLP, fc1 column-parallel and fc2 row-parallel (torch.distributed.tensor.parallel),
with dropout on the hidden activation, which lives sharded on its last dim between the two
layers. One forward and backward pass runs with tensor-parallel degrees 1, 2 and 4 (in
gloo processes on 127.0.0.1 that this script starts) and prints the loss and a digest
(sha256 of the bytes) of every gradient:

- dropout_ext.functional.dropout on the sharded activation (a DTensor): each rank draws
  exactly its slice of the mask of the whole activation, so the loss and every gradient
  are bitwise the same for every degree;
- torch.nn.Dropout on each rank's shard with a generator seeded per rank (what Megatron-style
  RNG trackers do): the masks depend on the degree, and so do the loss and the gradients.

    python examples/tensor_parallel_mlp.py
"""
import hashlib
import json
import os
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import dropout_ext.functional as DF

DEGREES = (1, 2, 4)
BATCH, DIM, HIDDEN, P, SEED = 8, 8, 16, 0.5, 1234


class MLP(torch.nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(DIM, HIDDEN), torch.nn.Linear(HIDDEN, DIM)
        self.dropout = dropout

    def forward(self, x):
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


def ours(h):
    # h: a DTensor sharded on its last dim (ColwiseParallel(use_local_output=False)). The
    # same call as on one device; every rank must have called torch.manual_seed(SEED).
    return DF.dropout(h, P)


def megatron_style(h):
    # torch's dropout on the rank's own shard, from the rank's own generator state
    local = torch.nn.functional.dropout(h.to_local(), P)
    return DTensor.from_local(local, h.device_mesh, h.placements, run_check=False)


def exact_grid(shape, scale, generator):
    """Integers in [-3, 3] times `scale` (a power of two)."""
    return torch.randint(-3, 4, shape, generator=generator).float() * scale


def step(mesh, dropout, seed):
    """One forward and backward pass, tensor parallel over `mesh`; (loss, {name: gradient})."""
    # Exact arithmetic: inputs and weights are integers in [-3, 3] times 1/4 or 1/8 and
    # P = 0.5 scales by 2, so every product and partial sum of the forward and backward
    # passes is a small multiple of a power of two, exact in float32 (the same step in
    # float64 gives the same numbers). The row-parallel layer's all-reduce adds the ranks'
    # partial sums in another order than one matmul does, which could otherwise change the
    # last bits by itself: here only the dropout masks can make the degrees differ.
    g = torch.Generator().manual_seed(0)
    model = MLP(dropout)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(exact_grid(p.shape, 1 / 8, g))
    x, target = exact_grid((BATCH, DIM), 1 / 4, g), exact_grid((BATCH, DIM), 1 / 4, g)
    parallelize_module(model, mesh, {"fc1": ColwiseParallel(use_local_output=False), "fc2": RowwiseParallel()})
    torch.manual_seed(seed)
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    return loss, {name: p.grad.full_tensor() for name, p in model.named_parameters()}


def digest(t):
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:12]


def worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    for degree in DEGREES:
        # the first `degree` ranks make one tensor-parallel group (every rank takes part in
        # creating it); the others wait
        mesh = DeviceMesh("cpu", list(range(degree)))
        if rank < degree:
            for name, dropout, seed in (("dropout_ext", ours, SEED),  # the same seed on every rank
                                        ("torch.nn.Dropout", megatron_style, SEED + 2718 + rank)):  # per rank
                loss, grads = step(mesh, dropout, seed)
                results.setdefault(name, {})[degree] = ["loss=%r" % loss.item()] + [
                    "%s=%s" % (k, digest(v)) for k, v in grads.items()]
        dist.barrier()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def main():
    """Spawn max(DEGREES) gloo processes on 127.0.0.1; print and return the results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "results.json")
        # fork where there is fork: the children need not import torch again (seconds each)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(worker, args=(max(DEGREES), port, out_path), nprocs=max(DEGREES), start_method=method)
        with open(out_path) as f:
            results = json.load(f)
    for name, rows in results.items():
        for degree in DEGREES:
            print("%-17s tp=%d  %s" % (name, degree, "  ".join(rows[str(degree)])))
        same = all(rows[str(degree)] == rows[str(DEGREES[0])] for degree in DEGREES)
        print("%s: bitwise identical across degrees %s: %s\n" % (name, ", ".join(map(str, DEGREES)),
                                                                "yes" if same else "no"))
    return results


if __name__ == "__main__":
    main()
