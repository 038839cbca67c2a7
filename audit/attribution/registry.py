"""Method names (as they appear in settings and in the audit record) -> classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .attention import AttentionAttributor
from .base import Attributor
from .baseline import RandomAttributor
from .hierarchical import HierarchicalAttributor
from .kernel_shap import ShapAttributor
from .loo import LeaveOneOut
from .similarity import SimilarityAttributor
from .surrogate import AblationSurrogate

__all__ = ["METHODS", "make_attributor"]

# Each class's constructor takes its own keyword settings and builds an Attributor.
METHODS: dict[str, Callable[..., Attributor]] = {
    "attention": AttentionAttributor,
    "surrogate": AblationSurrogate,
    "shap": ShapAttributor,
    "loo": LeaveOneOut,
    "hierarchical": HierarchicalAttributor,
    "similarity": SimilarityAttributor,
    "random": RandomAttributor,
}


def make_attributor(name: str, **kwargs: Any) -> Attributor:
    """Build a method by name; kwargs go to its constructor (e.g. ``n_ablations=64``)."""
    try:
        cls = METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"unknown attribution method {name!r}; choose one of: {known}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad settings for attribution method {name!r}: {exc}") from exc
