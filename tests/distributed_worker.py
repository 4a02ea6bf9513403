"""Run by ``torchrun`` from ``tests/test_distributed.py`` (not collected: no ``test_`` prefix).

Every rank prunes the cases named on the command line with the default process group and saves
what it ended with (state dict, masks, layer reports) to ``OUT/<case>.rank<R>.pt``; one thread per
rank, as the single-process run it is compared with.

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py OUT CASE [CASE ...]

A CASE is ``arch:method:pattern`` (a tiny seeded model) or ``smollm2`` (the real model's first
two blocks). ``cases()`` is shared with the test so that both sides run the very same setting.
"""

from __future__ import annotations

import sys

import torch

NSAMPLES, SEQLEN, BATCH = 7, 16, 2  # 4 uneven batches (2, 2, 2, 1): round-robin over 2 ranks
SMOL_NSAMPLES, SMOL_SEQLEN, SMOL_TARGETS = 4, 64, ["model.layers.[01].*"]


def run_case(case: str, workdir: str = "") -> dict:
    """Prune one case in this process (under whatever process group is initialised). A case
    ``offload:arch:method:pattern`` saves the tiny model under ``workdir`` and prunes it loaded with
    everything offloaded to disk (each rank its own offload folder)."""
    from thanos import data
    from thanos.assets import load_model, tiny_model
    from thanos.distributed import resolve_group, rank
    from thanos.model import prune_model

    offload = case.startswith("offload:")
    case = case.removeprefix("offload:")
    if case == "smollm2":  # saved once by the test as a float32 folder (loads in seconds, unlike the GGUF)
        model, tokenizer = load_model(f"{workdir}/smollm2")
        cal = data.calibration_windows(tokenizer, nsamples=SMOL_NSAMPLES, seqlen=SMOL_SEQLEN, seed=0)
        result = prune_model(model, cal, method="thanos", pattern="unstructured", batch_size=1, targets=SMOL_TARGETS,
                             keep_masks=True)
        prefix = ("model.layers.0.", "model.layers.1.")
        weights = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    else:
        arch, method, pattern = case.split(":", 2)
        model, _ = tiny_model(arch, seed=6, layers=3)
        if offload:  # the folder saved by save_tiny (transformers saves on rank 0 only under a process group)
            from pathlib import Path

            folder = Path(workdir) / f"model-{arch}"
            model, _ = load_model(folder, max_memory={"cpu": 100_000},
                                  offload_folder=Path(workdir) / f"offload-{arch}-rank{rank(resolve_group())}")
        cal = torch.randint(0, 257, (NSAMPLES, SEQLEN), generator=torch.Generator().manual_seed(2))
        result = prune_model(model, None if method == "magnitude" else cal, method=method, pattern=pattern,
                             block_size=16, batch_size=BATCH, keep_masks=True)
        weights = offloaded_state(model) if offload else model.state_dict()
    return {"weights": {k: v.detach().clone() for k, v in weights.items()}, "masks": result.masks,
            "layers": [(l.name, l.pruned, l.loss, l.damping, l.tokens) for l in result.layers],
            "ranks": [l.rank for l in result.layers], "world_size": result.world_size, "offloaded": result.offloaded}


def save_tiny(arch: str, workdir) -> None:
    """The tiny model of ``run_case`` saved as ``workdir/model-<arch>``, for the offload cases."""
    from thanos.assets import tiny_model

    model, tokenizer = tiny_model(arch, seed=6, layers=3)
    model.save_pretrained(f"{workdir}/model-{arch}")
    tokenizer.save_pretrained(f"{workdir}/model-{arch}")


def offloaded_state(model) -> dict:
    """Every tensor of an Accelerate-offloaded model, read where a save reads it (the offload
    hooks' weights maps for the tensors on ``meta``)."""
    out = {}
    for prefix, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            full = f"{prefix}.{name}" if prefix else name
            if full in model.state_dict():
                out[full] = hook.weights_map[name].clone() if t.device.type == "meta" else t.detach().clone()
    return out


def main(argv) -> int:
    import torch.distributed as dist

    from thanos.distributed import init_from_env

    torch.set_num_threads(1)
    out, cases = argv[0], argv[1:]
    init_from_env("cpu")
    rank = dist.get_rank()
    for case in cases:
        torch.save(run_case(case, out), f"{out}/{case.replace(':', '_')}.rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
