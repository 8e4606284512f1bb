"""
One process or many under torchrun: the process group, rank-0 printing, averaged tensors and
DDP around the model. A plain run is a Dist() of one process, and every helper works on it.
"""

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from wigglegpt.common import UserError, pick_device


@dataclass
class Dist:
    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def master(self):
        return self.rank == 0


def setup_distributed(requested_device, backend="auto"):
    """(Dist, device). torchrun sets RANK/WORLD_SIZE: join the process group (auto: nccl on
    CUDA, else gloo), one GPU per process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), pick_device(requested_device)
    dist = Dist(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
    device = pick_device(requested_device)
    if device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"  # one GPU per process
        torch.cuda.set_device(device)
    nccl = device.startswith("cuda") and torch_dist.is_nccl_available()  # Windows builds have no nccl
    if backend == "nccl" and not nccl:
        raise UserError("backend='nccl' needs CUDA and a torch build with NCCL; use backend='gloo' or 'auto'")
    torch_dist.init_process_group(backend=("nccl" if nccl else "gloo") if backend == "auto" else backend)
    return dist, device


def shutdown(dist):
    if dist.ddp:
        torch_dist.destroy_process_group()


def barrier(dist):
    if dist.ddp:
        torch_dist.barrier()


def print0(dist, *args, **kwargs):
    """Only rank 0 talks; the other processes would repeat it."""
    if dist.master:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(tensor, dist):
    """The tensor averaged over the processes, in place (a collective: every rank calls it)."""
    if dist.ddp:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= dist.world
    return tensor


def all_gather(obj, dist):
    """[every process's obj] in rank order (a collective)."""
    if not dist.ddp:
        return [obj]
    everyone = [None] * dist.world
    torch_dist.all_gather_object(everyone, obj)
    return everyone


def data_parallel(model, dist, device_type):
    """DDP around the model, without syncing buffers at each forward: the buffers (RoPE tables,
    firing counters) are the same on every rank or rank-local, and DDP would otherwise re-send
    them from rank 0 before every forward, the no_sync micro-steps included. (Newer torch names
    the switch forward_sync_buffers and deprecates broadcast_buffers.)"""
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[dist.local_rank] if device_type == "cuda" else None, **no_sync)
