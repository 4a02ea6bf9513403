"""The kernel registry (``thanos.testing.registry``, PyTorch OpInfo style): every production kernel
against its reference function on the registry's sample inputs, per device and dtype; and no
public kernel of ``thanos._kernels`` without an entry."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import thanos._kernels as kernels
import tolerances as T
from thanos.testing.adapters import to_numpy
from thanos.testing.registry import REGISTRY

COMPARED = [info for info in REGISTRY if info.compare != "catalogue"]


def _production_args(info, sample, dtype, device):
    if info.to_production is not None:
        return info.to_production(torch, sample.args, dtype, device)
    dt = getattr(torch, dtype)
    return tuple(torch.tensor(a, dtype=torch.bool if a.dtype == bool else dt, device=device) if isinstance(a, np.ndarray) else a
                 for a in sample.args)


@pytest.mark.parametrize("info,dtype", [(info, dtype) for info in COMPARED for dtype in info.dtypes],
                         ids=lambda x: x if isinstance(x, str) else x.name)
def test_production_kernel_matches_its_reference(device, info, dtype):
    production = info.production_callable()
    rng = np.random.default_rng(0)
    samples = list(info.samples(rng, dtype))
    assert samples, f"{info.name}: no sample inputs"
    for sample in samples:
        got = production(*_production_args(info, sample, dtype, device))
        expected = info.ref(*sample.args)
        what = f"{info.name} ({dtype}, {device}) {sample.note} shapes {[getattr(a, 'shape', a) for a in sample.args][:3]}"
        if info.from_production is not None:
            got = info.from_production(got)
        if isinstance(expected, tuple):  # damped_factor: (U, damping)
            (got, got_damping), (expected, expected_damping) = got, expected
            # both take the load from spec.damping_schedule (the same code on the same number):
            # equal unless one of them rejected a load, which these well-conditioned samples never need
            assert got_damping == expected_damping, what
        got = to_numpy(got)
        if info.compare == "exact":
            # masks and indices from identical score values by comparisons alone: equality is the point
            assert np.array_equal(got, np.asarray(expected)), f"{what}: {got} vs {expected}"
        elif info.compare == "bound":  # a certified lower bound: below the value, to rounding
            H = sample.args[0]
            slack = T.rounding_tol(sample.n) * float(np.max(np.abs(H)))
            assert float(got) <= float(expected) + slack, f"{what}: bound {got!r} above the value {expected!r}"
        elif info.compare == "solve":
            tol = T.solve_tol(sample.n, sample.kappa, dtype)
            T.assert_close(got, expected, tol=tol, kappa=sample.kappa, dtype=dtype, what=what)
        else:
            T.assert_close(got, expected, tol=T.rounding_tol(sample.n, dtype), dtype=dtype, what=what)


def test_every_production_kernel_has_a_reference():
    public = {name for name, obj in vars(kernels).items()
              if inspect.isfunction(obj) and obj.__module__ == kernels.__name__ and not name.startswith("_")}
    registered = {info.production.split(":")[1] for info in REGISTRY if info.production.startswith("thanos._kernels:")}
    assert public - registered == set(), f"kernels without a reference in the registry: {sorted(public - registered)}"
    for info in REGISTRY:
        assert callable(info.production_callable()) and callable(info.ref), info.name
