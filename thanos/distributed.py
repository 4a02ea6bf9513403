"""Several processes with ``torch.distributed``: ``torchrun --nproc-per-node N -m thanos prune ...``.

Every rank loads the model (or its offload map) and the same calibration windows. Then, per
decoder block (``thanos.model.prune_model``):

- the calibration batches are dealt round-robin (batch k to rank k mod N): each rank captures and
  forwards only its own batches;
- the linears of the block are assigned to ranks by their cost (``assign``: largest first to the
  least loaded rank); a rank accumulates the Hessian of every input that feeds one of its linears.
  The activations of each batch are broadcast from the rank that computed them, in the global
  batch order, and every rank that needs them calls ``HessianAccumulator.update`` on them in that
  order: the very same updates on the very same values as a single process, so every H is the
  single-process H bit for bit (an all-reduce of per-rank partial sums would add the same terms
  in another order and differ by rounding, which can flip near-tied mask entries);
- each rank prunes its linears; the pruned weights (bit-exact, sent as raw integers) and the
  layer reports are broadcast from their owner, so every rank holds the same pruned block before
  it forwards its batches to the next one.

The result on N ranks is the result on one, bit for bit, at a fixed thread count (the same code
on the same values). Communication per block: each batch's layer inputs once (tokens x b per
input, a Hessian's b x b when tokens ~ b) plus the block's pruned weights. Backend: gloo on the
CPU, nccl on CUDA (``init_from_env``). Rank 0 alone writes the output.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (WORLD_SIZE, RANK, MASTER_ADDR) says so."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")) and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: str = "cpu") -> Optional[str]:
    """Initialise the default process group from torchrun's environment (``env://``) when launched
    by torchrun with more than one process and not yet initialised; gloo for the CPU, nccl for
    CUDA (each rank on ``cuda:LOCAL_RANK``). Returns the device this rank computes on (None when
    not distributed)."""
    import torch.distributed as dist

    if not launched_by_torchrun():
        return None
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return str(dev)


def resolve_group(group: Any = None):
    """The process group to prune with: ``group``, else the default one when initialised."""
    if group is not None:
        return group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


def world_size(group) -> int:
    import torch.distributed as dist

    return 1 if group is None else dist.get_world_size(group)


def rank(group) -> int:
    import torch.distributed as dist

    return 0 if group is None else dist.get_rank(group)


def is_main_process() -> bool:
    """Rank 0 of the default group, or not distributed."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _global(group, group_rank: int) -> int:
    import torch.distributed as dist

    return dist.get_global_rank(group, group_rank) if group is not dist.group.WORLD else group_rank


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers of its width: broadcast bit-exactly whatever its dtype."""
    return t.view(_RAW[t.element_size()])


def assign(linears: dict, method: str, world: int) -> dict:
    """``{name: rank}``: largest cost first (``thanos.model.layer_cost``), each to the least loaded
    rank (lowest rank on ties); deterministic, the same on every rank."""
    from .model import layer_cost

    load = [0.0] * world
    owners = {}
    order = sorted(linears, key=lambda n: -layer_cost(tuple(linears[n].weight.shape), method))
    for name in order:
        r = min(range(world), key=lambda k: (load[k], k))
        owners[name] = r
        load[r] += layer_cost(tuple(linears[name].weight.shape), method)
    return {name: owners[name] for name in linears}


class Exchange:
    """The collective side of ``thanos.model.accumulate_hessians`` for one rank."""

    def __init__(self, group, all_batches: list, seqlen: int):
        self.group = group
        self.world = world_size(group)
        self.rank = rank(group)
        self.all_batches = list(all_batches)
        self.seqlen = seqlen
        self.mine: set = set()
        self.device = torch.device("cpu")

    def begin_block(self, mine: set, device) -> None:
        """The names of the linears this rank prunes in the coming block, and its device."""
        self.mine = set(mine)
        self.device = torch.device(device)

    def accumulate(self, block, linears: dict, batches: list, seen, pending: dict, accumulator) -> None:
        """Run this rank's batches through ``block`` (the hooks fill ``pending``) and feed every
        needed ``accumulator(name)`` all batches' inputs in the global batch order."""
        import torch.distributed as dist

        world, me = self.world, self.rank
        count = len(self.all_batches)
        owner = None
        accumulating: list = []
        for j in range((count + world - 1) // world):
            local = {}
            if j * world + me < count:
                x, kw = batches[j]
                seen.new_forward()
                pending.clear()
                block(x, **kw)
                local = dict(pending)
                pending.clear()
            if owner is None:  # which linears share an input: learnt by rank 0 on batch 0
                box = [dict(seen.owner) if me == 0 else None]
                dist.broadcast_object_list(box, src=_global(self.group, 0), group=self.group)
                owner = box[0]
                accumulating = [n for n in linears if owner.get(n, n) == n]
                needed = {owner.get(n, n) for n in self.mine}
            for src in range(world):
                k = j * world + src
                if k >= count:
                    break
                for name in accumulating:
                    columns = linears[name].in_features
                    meta = torch.zeros(2, dtype=torch.int64)
                    if src == me:
                        x = local[name]
                        meta[0], meta[1] = _DTYPES.index(x.dtype), x.numel() // columns
                    self._broadcast(meta, src)
                    if src == me:
                        payload = x.reshape(-1, columns).contiguous()
                    else:
                        payload = torch.empty((int(meta[1]), columns), dtype=_DTYPES[int(meta[0])], device=self.device)
                    self._broadcast(_raw(payload), src)
                    if name in needed:
                        accumulator(name).update(x if src == me else payload)

    def _backend(self) -> str:
        import torch.distributed as dist

        return dist.get_backend(self.group)

    def _broadcast(self, t: torch.Tensor, src: int) -> None:
        import torch.distributed as dist

        if self._backend() == "gloo" and t.device.type != "cpu":
            host = t.cpu()
            dist.broadcast(host, src=_global(self.group, src), group=self.group)
            t.copy_(host)
        else:
            dist.broadcast(t, src=_global(self.group, src), group=self.group)


def share_pruned(group, linears: dict, owners: dict, records: dict, keep_masks: bool) -> dict:
    """Broadcast each pruned weight (raw bits) and its ``(LayerResult, mask)`` from its owner;
    returns the records of every linear, the same on every rank."""
    import torch.distributed as dist

    backend = dist.get_backend(group)
    out = {}
    for name, linear in linears.items():
        src = _global(group, owners[name])
        weight = linear.weight.data
        if backend == "gloo" and weight.device.type != "cpu":
            host = weight.cpu()
            dist.broadcast(_raw(host), src=src, group=group)
            weight.copy_(host)
        else:
            dist.broadcast(_raw(weight), src=src, group=group)
        box = [records.get(name)]
        dist.broadcast_object_list(box, src=src, group=group)
        out[name] = box[0]
    return out
