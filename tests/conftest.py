"""Hypothesis profiles, the device fixture and the benchmark tests' fake texts, shared by the suite.

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


@pytest.fixture
def fake_study_texts(monkeypatch):
    """``benchmarks.study.load_texts`` (the SmolLM2 package's texts, tokenised) replaced by seeded
    random tokens for the benchmark tooling's tests on tiny models: 400 calibration tokens, and each
    evaluation text its own windows, the same whichever other texts are asked for. The test modules
    that use it put the repository on ``sys.path`` (``benchmarks/`` is not installed)."""
    import zlib

    import torch
    from benchmarks import study

    def texts(tokenizer, names, eval_windows, eval_seqlen):
        windows = {n: torch.randint(0, 257, (eval_windows, eval_seqlen), generator=torch.Generator().manual_seed(
            zlib.crc32(n.encode()))) for n in names}
        return torch.randint(0, 257, (400,), generator=torch.Generator().manual_seed(7)), windows

    monkeypatch.setattr(study, "load_texts", texts)
