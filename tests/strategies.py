"""Moved to ``thanos.testing.strategies`` (the conformance kit's case generation)."""
from thanos.testing.strategies import *  # noqa: F401,F403  (re-export: the suite keeps ``import strategies as S``)
