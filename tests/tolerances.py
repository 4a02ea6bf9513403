"""Moved to ``thanos.testing.tolerances`` (one tolerance model for tests, proofs and ``thanos verify``)."""
from thanos.testing.tolerances import *  # noqa: F401,F403  (re-export: the suite keeps ``import tolerances as T``)
