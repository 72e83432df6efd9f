"""models.train_step under DistributedDataParallel: 2 CPU processes (gloo) give the same
gradients and update as one process on the same global batch.

BatchNorm is put in eval mode (running statistics; dropout off too): in train mode each
process would normalise with its own half-batch statistics, which is exactly what SyncBN
fixes, and SyncBN needs GPUs (gloo on the CPU has no SyncBN). The loss is mmseg's mean
over all pixels, so with equal per-process batches the DDP average equals the global loss.
Everything runs in float64: unscaled attention logits make fp32 rounding differences
between batch sizes show at 1e-5, which would hide a real error of that size.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import models

WORLD = 2
LR = 0.1


pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> models.DANet:
    """The tiny DANet with non-trivial BN statistics and attention, identical in every process."""
    torch.manual_seed(0)
    model = models.build_tiny_danet(num_classes=4, attention_backend="chunked")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)  # also undoes the zero-init residual
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.decode_head.pam.gamma.scale.fill_(0.5)
        model.decode_head.cam.gamma.scale.fill_(0.5)
    return model.double().eval()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    images = torch.randn(2 * WORLD, 3, 32, 32, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2 * WORLD, 32, 32), generator=g)
    labels[:, :, :3] = 255
    return images, labels


def step(model: torch.nn.Module, net: models.DANet, images, labels) -> dict:
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    losses = models.train_step(model, optimizer, images, labels)
    return {
        "loss": losses["loss"],
        "grads": {n: p.grad.clone() for n, p in net.named_parameters()},
        "params": {n: p.detach().clone() for n, p in net.named_parameters()},
    }


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        net = make_model()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        images, labels = global_batch()
        mine = slice(2 * rank, 2 * rank + 2)
        result = step(ddp, net, images[mine], labels[mine])
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_two_processes_match_one(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    net = make_model()
    single = step(net, net, *global_batch())

    assert abs(sum(r["loss"] for r in ranks) / WORLD - single["loss"]) < 1e-10 * single["loss"]
    largest = max(g.abs().max() for g in single["grads"].values())
    assert largest > 0
    for name, ref in single["grads"].items():
        for r in ranks:  # every rank holds the all-reduced (averaged) gradient
            assert (r["grads"][name] - ref).abs().max() <= 1e-10 * largest, name
            step_err = (r["params"][name] - single["params"][name]).abs().max()
            assert step_err <= 1e-10 * LR * largest, name
    # rank 0's half of the batch alone gives other gradients: the match is the all-reduce
    images, labels = global_batch()
    net = make_model()
    half = step(net, net, images[:2], labels[:2])
    name = "decode_head.conv_seg.weight"
    assert (half["grads"][name] - single["grads"][name]).abs().max() > 1e-3 * largest
