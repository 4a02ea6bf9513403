"""``thanos prune`` flags for placement: offload (Accelerate) and several processes (torchrun).

``--offload-folder DIR`` and ``--max-memory cpu=2GiB,0=20GiB`` load the model with an Accelerate
``device_map="auto"``: what does not fit in ``max_memory`` goes to the CPU, then to DIR on disk;
``prune_model`` brings one decoder block at a time onto ``--device``. Launched by ``torchrun
--nproc-per-node N -m thanos prune ...``, each process joins the default process group (gloo on
the CPU, nccl on CUDA, each rank on ``cuda:LOCAL_RANK``) and rank 0 alone writes ``--out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def add_arguments(p) -> None:
    """The placement flags of ``thanos prune``."""
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="offload what does not fit in --max-memory to this folder on disk (Accelerate); "
                        "one decoder block at a time is brought onto --device")
    p.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="memory per device for the model's weights, e.g. 'cpu=2GiB' or '0=20GiB,cpu=64GiB' "
                        "(GPU index or cuda:N, cpu; sizes in B, KB, MB, GB, KiB, MiB, GiB)")


def parse_max_memory(text: str) -> dict:
    """``"cpu=2GiB,0=20GiB"`` -> ``{"cpu": 2147483648, 0: 21474836480}``; ValueError naming
    ``--max-memory`` otherwise."""
    from accelerate.utils import convert_file_size_to_int

    out: dict = {}
    for part in text.split(","):
        device, sep, size = part.strip().partition("=")
        device, size = device.strip(), size.strip()
        if not sep or not device or not size:
            raise ValueError(f"--max-memory: {part!r} is not DEVICE=SIZE (e.g. cpu=2GiB or 0=20GiB)")
        key: object
        if device == "cpu":
            key = "cpu"
        elif device.isascii() and device.isdigit():
            key = int(device)
        elif device.startswith("cuda:") and device[5:].isascii() and device[5:].isdigit():
            key = int(device[5:])
        else:
            raise ValueError(f"--max-memory: device {device!r} must be cpu, a GPU index or cuda:N")
        try:
            value = int(size) if size.isascii() and size.isdigit() else convert_file_size_to_int(size)
        except (ValueError, TypeError):
            value = None
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"--max-memory: size {size!r} of {device} is not a positive size (e.g. 512MiB, 2GB)")
        if key in out:
            raise ValueError(f"--max-memory: {device} given twice")
        out[key] = value
    return out


def check_arguments(args) -> dict:
    """Check the placement flags before anything is loaded; return ``load_model``'s keywords.
    Raises ``thanos.cli.UsageError`` naming the flag."""
    from .cli import UsageError

    kwargs: dict = {}
    max_memory = getattr(args, "max_memory", None)
    folder = getattr(args, "offload_folder", None)
    if max_memory is not None:
        try:
            kwargs["max_memory"] = parse_max_memory(max_memory)
        except ValueError as err:
            raise UsageError(str(err)) from None
        import torch

        gpus = [k for k in kwargs["max_memory"] if isinstance(k, int)]
        if gpus and (not torch.cuda.is_available() or max(gpus) >= torch.cuda.device_count()):
            raise UsageError(f"--max-memory: GPU {max(gpus)} does not exist on this machine")
    if folder is not None:
        path = Path(folder).absolute()
        if path.exists() and not path.is_dir():
            raise UsageError(f"--offload-folder {folder}: exists and is not a folder")
        out = Path(args.out).absolute() if getattr(args, "out", None) else None
        if out is not None and (path == out or out in path.parents):
            raise UsageError(f"--offload-folder {folder}: must not lie inside --out {args.out} (it is replaced at the end)")
        ancestor = path
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UsageError(f"--offload-folder {folder}: {ancestor} is not writable")
        kwargs["offload_folder"] = str(path)
    return kwargs


def start(args, placed: Optional[dict] = None) -> Optional[str]:
    """Join torchrun's process group when launched by it; sets ``args.device`` to this rank's
    device and returns it (None when not distributed). Each rank writes its pruned offloaded
    weights to its own ``rank<R>`` subfolder of ``--offload-folder`` (``placed``, updated)."""
    import torch.distributed as dist

    from .distributed import init_from_env

    device = init_from_env(args.device)
    if device is not None:
        args.device = device
        if placed is not None and placed.get("offload_folder"):
            placed["offload_folder"] = str(Path(placed["offload_folder"]) / f"rank{dist.get_rank()}")
    return device


def report_fields(result) -> dict:
    """What ``report.json`` says about placement and memory."""
    return {"world_size": result.world_size, "offloaded": result.offloaded, "storage_dtype": result.storage_dtype,
            "compute_dtype": result.compute_dtype, "peak_device_memory_mib": result.peak_device_memory_mib,
            "peak_block_memory_mib": result.peak_block_memory_mib}


def is_writer() -> bool:
    """True on the process that writes the output (rank 0, or the only one)."""
    from .distributed import is_main_process

    return is_main_process()


def finish() -> None:
    """Wait for every rank, then leave the process group (when distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
