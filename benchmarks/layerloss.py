"""``python -m benchmarks layerloss [--patterns P,...] [--block-sizes B,...] [--blocks I,...] [--out FILE]``

Thanos' block size B seen one layer at a time, on SmolLM2-135M: each Linear of the chosen decoder
blocks is pruned with the Hessian of the calibration data (the block-size study's draw: windows
from the first 90 % of the C4 sample, ``study.load_texts`` and ``data.random_windows``), at every B,
and the layer loss ``sum_k 1/2 Delta_k H Delta_k^T`` of the result (``reference.equations.
layer_loss``) is measured under that calibration Hessian and under the Hessian of each evaluation
text. All Hessians are the dense model's (``thanos.verify.real_hessians``: each block's inputs come
from the unpruned blocks before it), so the numbers separate what B does to one layer's fit, on the
calibration data and on other text, from what the pruned blocks do to each other in the pipeline
(the block-size study's perplexities). The table gives, per pattern and per Hessian, the mean over
the layers of the loss above the layer's best B, in %, and in how many layers the B best on
average is the lowest.

Writes JSON (default ``benchmarks/results/layerloss.json``: settings, machine, seconds, one row per
pattern x layer x B x Hessian) and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from benchmarks import study
from benchmarks.speed import ROOT, _machine

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "layerloss.json"
CALIBRATION = "calibration"


def parse_args(argv):
    comma = study._comma_list
    p = argparse.ArgumentParser(prog="python -m benchmarks layerloss", description=__doc__.splitlines()[0])
    p.add_argument("--patterns", default="unstructured,2:4,4:8", type=comma(str, lambda v: v in study.PATTERN_SPARSITY
                                                                              and v != "structured", "patterns among unstructured (50%), 2:4, 4:8"),
                   help="comma-separated patterns among unstructured (50%%), 2:4, 4:8")
    p.add_argument("--block-sizes", default="32,64,128,256,512,1024,0", type=comma(int, lambda v: v >= 0, "integers >= 0"),
                   help="comma-separated block sizes, 0 = the whole layer")
    p.add_argument("--blocks", default="0,10,20,29", type=comma(int, lambda v: v >= 0, "integers >= 0"),
                   help="comma-separated decoder blocks whose Linears are pruned")
    p.add_argument("--calibration-windows", default=128, type=int, help="calibration windows of --seqlen tokens")
    p.add_argument("--seqlen", default=512, type=int)
    p.add_argument("--eval-windows", default=40, type=int, help="windows of --seqlen tokens of each text")
    p.add_argument("--texts", default="wiki,c4-heldout,code,technical,multilingual",
                   type=comma(str, lambda v: v in study.TEXTS, f"texts among {study.TEXTS}"))
    p.add_argument("--seed", default=0, type=int, help="calibration seed")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("calibration_windows", "seqlen", "eval_windows"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    if Path(args.out).is_dir():
        p.error(f"--out: {args.out} is a folder; give a file name")
    args.command = " ".join(["python -m benchmarks layerloss", *(shlex.quote(a) for a in argv)])
    return args


def measure(model, tokenizer, args, progress=print) -> list:
    """One row per pattern x layer x B x Hessian: {pattern, block, name, columns, B, hessian, loss}."""
    import torch

    import thanos
    from reference.equations import layer_loss
    from thanos import data
    from thanos.model import block_linears, decoder_layers
    from thanos.verify import real_hessians

    n_blocks = len(decoder_layers(model))
    if max(args.blocks) >= n_blocks:
        raise SystemExit(f"--blocks: the model has {n_blocks} decoder blocks (0 to {n_blocks - 1}), got {list(args.blocks)}")
    names = list(block_linears(decoder_layers(model)[0]))
    calibration_tokens, windows = study.load_texts(tokenizer, list(args.texts), args.eval_windows, args.seqlen)
    calibration = data.random_windows(calibration_tokens, args.calibration_windows, args.seqlen, args.seed)
    progress(f"[Hessians of the calibration data: {args.calibration_windows} windows, seed {args.seed}]")
    hessians = {CALIBRATION: real_hessians(model, calibration, list(args.blocks), names)}
    for text in args.texts:
        progress(f"[Hessians of {text}]")
        hessians[text] = real_hessians(model, windows[text], list(args.blocks), names)
    rows = []
    for (block, name), (W, H) in hessians[CALIBRATION].items():
        for pattern in args.patterns:
            for b in args.block_sizes:
                pruned = thanos.prune(W.to(torch.float32), H.to(torch.float32), method="thanos", pattern=pattern,
                                      sparsity=study.PATTERN_SPARSITY[pattern], block_size=b or W.shape[1], alpha=0.0).weight
                for source, by_layer in hessians.items():
                    rows.append(dict(pattern=pattern, block=block, name=name, columns=int(W.shape[1]), B=b, hessian=source,
                                     loss=layer_loss(W.numpy(), pruned.double().numpy(), by_layer[(block, name)][1].numpy())))
            progress(f"[{block}.{name} at {pattern}: {len(args.block_sizes)} block sizes]")
    return rows


def _by_layer(rows: list) -> dict:
    """{(pattern, hessian): {(block, name): {B: loss}}}."""
    by = {}
    for r in rows:
        by.setdefault((r["pattern"], r["hessian"]), {}).setdefault((r["block"], r["name"]), {})[r["B"]] = r["loss"]
    return by


def above_best(rows: list) -> dict:
    """{(pattern, hessian): {B: mean over the layers of 100 (loss / the layer's smallest loss - 1)}}."""
    out = {}
    for key, layers in _by_layer(rows).items():
        per_b = {}
        for losses in layers.values():
            best = min(losses.values())
            for b, loss in losses.items():
                per_b.setdefault(b, []).append(100.0 * (loss / best - 1.0) if best > 0 else 0.0)
        out[key] = {b: statistics.fmean(v) for b, v in per_b.items()}
    return out


def lowest_in(rows: list) -> dict:
    """{(pattern, hessian): {B: in how many layers B's loss is the smallest}}. A tie counts for each
    B in it: a B at least the layer's width prunes it as one block, as the whole layer does, so on a
    576-column layer B = 1024 and the whole layer are the same computation and tie exactly."""
    return {key: {b: sum(losses[b] == min(losses.values()) for losses in layers.values())
                  for b in next(iter(layers.values()))}
            for key, layers in _by_layer(rows).items()}


def markdown(result: dict) -> str:
    rows = result["rows"]
    table, lowest = above_best(rows), lowest_in(rows)
    bs = list(dict.fromkeys(r["B"] for r in rows))
    sources = list(dict.fromkeys(r["hessian"] for r in rows))
    layers = len({(r["block"], r["name"]) for r in rows})
    lines = [f"Layer loss above each layer's best B, in %, mean over {layers} Linears (decoder blocks "
             f"{', '.join(str(b) for b in result['settings']['blocks'])}); pruned with the calibration Hessian, "
             f"measured under each Hessian (`{result['settings']['command']}`; {result['machine']}; "
             f"{result['seconds']:.0f} s)", ""]
    for pattern in dict.fromkeys(r["pattern"] for r in rows):
        lines += [f"**{study._pattern_label(pattern, study.PATTERN_SPARSITY[pattern])}**", "",
                  "| Hessian | " + " | ".join(study._label_b(b) for b in bs) + " | best B on average | layers where it is the lowest |",
                  "|---|" + "---:|" * len(bs) + "---|---:|"]
        for source in sources:
            cells = table[(pattern, source)]
            best = min(bs, key=lambda b: cells[b])
            lines.append(f"| {source} | " + " | ".join(f"{cells[b]:.2f}" for b in bs)
                         + f" | {study._label_b(best)} | {lowest[(pattern, source)][best]} of {layers} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None, *, loader=None) -> int:
    """``loader``: a function returning ``(model, tokenizer)`` (tests pass a tiny model)."""
    import torch

    from thanos.assets import load_model

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    started = time.perf_counter()
    model, tokenizer = (loader or load_model)()
    progress = (lambda *_: None) if args.no_progress else (lambda m: print(m, file=sys.stderr, flush=True))
    with torch.no_grad():
        rows = measure(model, tokenizer, args, progress)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "no_progress"}
    result = dict(settings=settings, machine=_machine("cpu"), seconds=time.perf_counter() - started, rows=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result) + "\n")
    print(markdown(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
