"""Sentence-level context attribution, in the manner of ContextCite (Cohen-Wang et al. 2024).

Every method works on a :class:`Scorer` -- log p(answer sentence | kept context sentences)
for a batch of keep/drop masks -- so this package never imports ``assistant`` or a model
library. Importing it is cheap: scikit-learn and shap load on first use.

    attributor = make_attributor("surrogate", n_ablations=32)
    result = attributor.attribute(CachedScorer(scorer), n_sources=S, n_targets=T)
    check = faithfulness(scorer, result, k=3)
"""

from .base import Attributor
from .baseline import RandomAttributor
from .faithfulness import Faithfulness, faithfulness, random_drop, removal_drop
from .kernel_shap import ShapAttributor
from .loo import LeaveOneOut
from .registry import METHODS, make_attributor
from .scorer import CachedScorer, CountingScorer, Scorer, evaluate
from .similarity import SimilarityAttributor
from .surrogate import AblationSurrogate
from .types import Attribution

__all__ = [
    "METHODS",
    "AblationSurrogate",
    "Attribution",
    "Attributor",
    "CachedScorer",
    "CountingScorer",
    "Faithfulness",
    "LeaveOneOut",
    "RandomAttributor",
    "Scorer",
    "ShapAttributor",
    "SimilarityAttributor",
    "evaluate",
    "faithfulness",
    "make_attributor",
    "random_drop",
    "removal_drop",
]
