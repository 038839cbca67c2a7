"""``clinrag eval``: measure retrieval, answers, citations, abstention and attribution.

    from evaluation import EvalOptions, run_evaluation
    summary, records = run_evaluation(EvalOptions(folder=Path("eval/pubmedqa"), limit=20), settings)

Metrics are pure functions in :mod:`evaluation.metrics`; the LangChain baseline is
the only part that imports LangChain (:mod:`evaluation.baseline_langchain`).
"""

from evaluation.runner import DEFAULT_METRICS, METRICS, EvalOptions, run_evaluation

__all__ = ["DEFAULT_METRICS", "METRICS", "EvalOptions", "run_evaluation"]
