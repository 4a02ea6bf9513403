"""Sequential onloading: only the decoder block being pruned lives on the compute device.

A model loaded with an Accelerate ``device_map`` (``load_model(..., max_memory=..., offload_folder=
...)``, or ``from_pretrained(device_map=...)``) carries an ``AlignDevicesHook`` on its modules;
an offloaded module keeps its weights on the ``meta`` device and reads them, at each forward, from
the hook's ``weights_map`` (CPU tensors, or memory-mapped files in the offload folder / the
checkpoint's safetensors). ``onloaded(block, device)`` takes the block's hooks off, materialises
every tensor of the block on ``device`` (from the weights map where offloaded), and on exit writes
the tensors named ``dirty`` (the pruned weights) back to where they live -- a new ``.dat`` file in
the offload folder for disk-offloaded ones, never the user's checkpoint --, puts the offloaded
tensors back on ``meta`` and the hooks back on. A ``save_pretrained`` afterwards reads every
weight through the hooks, so the saved model is complete and pruned.

A model without hooks is moved with ``block.to(device)`` and back to where its tensors were.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch
from torch import nn


def is_dispatched(model: nn.Module) -> bool:
    """True when Accelerate placed the model (hooks on its modules)."""
    return any(hasattr(m, "_hf_hook") for m in model.modules())


def _direct_tensors(module: nn.Module):
    for name, t in module.named_parameters(recurse=False):
        yield name, t
    for name, t in module.named_buffers(recurse=False):
        yield name, t


def store_offloaded(weights_map, key: str, tensor: torch.Tensor, folder: Optional[str] = None) -> None:
    """Write ``tensor`` as the offloaded value of ``key`` in an Accelerate weights map: in memory
    for a CPU-offloaded state dict, as ``<offload folder>/<full name>.dat`` (a fresh file; the index
    entry is replaced, so a weight that was read from the original checkpoint is not written
    there) for a disk-offloaded one."""
    from accelerate.utils import offload_weight
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    dataset, full = weights_map, key
    while isinstance(dataset, PrefixedDataset):
        full = dataset.prefix + full
        dataset = dataset.dataset
    value = tensor.detach().to("cpu")
    if isinstance(dataset, OffloadedWeightsLoader):
        if full in dataset.state_dict:
            dataset.state_dict[full] = value.clone()
            return
        target = dataset.save_folder or folder
        if target is None:
            raise ValueError(f"cannot write the pruned {full} back: the model's disk offload has no offload folder; "
                             f"load it with offload_folder=")
        offload_weight(value, full, str(target), index=dataset.index)
        dataset.save_folder = target
        return
    if isinstance(dataset, dict):
        dataset[full] = value.clone()
        return
    raise TypeError(f"cannot write {full} back into an offload map of type {type(dataset).__name__}")


@contextlib.contextmanager
def onloaded(block: nn.Module, device, dirty: Iterable[str] = ()):
    """Everything of ``block`` on ``device`` inside the ``with``; on exit the tensors named in
    ``dirty`` (names inside the block, e.g. ``"mlp.up_proj.weight"``) are written back to where
    they live, and the block is put back as it was."""
    device = torch.device(device)
    dirty = set(dirty)
    names = {m: n for n, m in block.named_modules()}
    hooked = [(m, m._hf_hook) for m in block.modules() if hasattr(m, "_hf_hook")]
    if not hooked:
        homes = {}
        for m in block.modules():
            for name, t in _direct_tensors(m):
                homes[(m, name)] = t.device
        block.to(device)
        try:
            yield block
        finally:
            for (m, name), home in homes.items():
                t = getattr(m, name)
                if t.device != home:
                    if name in m._parameters:
                        m._parameters[name].data = t.data.to(home)
                    else:
                        m._buffers[name] = t.to(home)
        return

    from accelerate.hooks import add_hook_to_module, remove_hook_from_module
    from accelerate.utils import set_module_tensor_to_device

    offloaded, homes = {}, {}
    for m, hook in hooked:
        remove_hook_from_module(m)
    try:
        for m, hook in hooked:
            weights_map = getattr(hook, "weights_map", None)
            if getattr(hook, "offload", False) and weights_map is not None:
                for name, t in _direct_tensors(m):
                    if t.device.type == "meta":
                        set_module_tensor_to_device(m, name, device, value=weights_map[name])
                        offloaded[(m, name)] = hook
        for m in block.modules():
            for name, t in _direct_tensors(m):
                if (m, name) in offloaded:
                    continue
                if t.device.type == "meta":
                    raise RuntimeError(f"{names[m]}.{name} is on the meta device with no offload map to read it from")
                homes[(m, name)] = t.device
                if t.device != device:
                    set_module_tensor_to_device(m, name, device)
        yield block
        for (m, name), hook in offloaded.items():
            full = f"{names[m]}.{name}" if names[m] else name
            if full in dirty:
                store_offloaded(hook.weights_map, name, getattr(m, name))
    finally:
        for (m, name) in offloaded:
            set_module_tensor_to_device(m, name, "meta")
        for (m, name), home in homes.items():
            if getattr(m, name).device != home:
                set_module_tensor_to_device(m, name, home)
        for m, hook in hooked:
            add_hook_to_module(m, hook)
