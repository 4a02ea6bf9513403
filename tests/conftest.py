"""Hypothesis profiles and the device fixture shared by the whole suite.

Profiles (chosen by HYPOTHESIS_PROFILE, set by tox): ``ci`` (derandomized, no deadline, no
database; what CI runs), ``dev`` (fewer examples, random), ``thorough`` (many examples).
Importing this file never initialises CUDA: ``torch.cuda.is_available()`` is asked inside the
fixture only.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, max_examples=40, **_common)
settings.register_profile("dev", max_examples=15, **_common)
settings.register_profile("thorough", max_examples=500, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the reference suite runs without torch
        return False
    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Every differential test runs on ``cpu`` and, marked ``gpu``, on ``cuda``; a machine
    without CUDA skips the cuda variant with a reason (never runs it on the CPU)."""
    if request.param == "cuda" and not _cuda_available():
        pytest.skip("CUDA is not available on this machine")
    return request.param
