"""The clinician questions with and without the unshown draft of quoted answers (issue 17).

    .venv/bin/python -m benchmarks.quoted_draft

Asks the 40 questions of ``evaluation/sets/clinician`` through the real pipeline with the
packaged model twice, ``quoted_draft`` on (every answer drafted, as before issue 17) and off,
unrecorded, on the load benchmark's home (``data_samples`` ingested, the set's library), and
prints how many shown answers (text and mode) are the same, how many drafts each way made,
how many answers hold the key fact, and the time for all 40. Exit status 1 if any differs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from benchmarks import load
from benchmarks.common import REPO
from core.config import apply_offline_environment

QUESTIONS = REPO / "evaluation" / "sets" / "clinician" / "clinician_questions.jsonl"


def main() -> int:
    apply_offline_environment()
    from assistant.pipeline import Assistant
    from core import backends
    from evaluation.metrics import key_fact_found

    home = load.DEFAULT_HOME
    load.prepare(home, False)
    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines()]
    base = load.settings_for(home, "off")
    llm = backends.create("llm", base.llm, base)
    llm.warm_up()
    answers: dict[bool, list[Any]] = {}
    seconds: dict[bool, float] = {}
    for draft in (True, False):
        assistant = Assistant(base.model_copy(update={"quoted_draft": draft}), llm=llm)
        t = time.perf_counter()
        answers[draft] = [assistant.ask(r["question"], record=False) for r in rows]
        seconds[draft] = round(time.perf_counter() - t, 1)
    pairs = list(zip(answers[True], answers[False], strict=True))
    same = sum(a.answer == b.answer and a.mode == b.mode for a, b in pairs)

    def key_facts(draft: bool) -> int:
        return sum(
            1
            for r, a in zip(rows, answers[draft], strict=True)
            if r.get("key_fact") and not a.abstained and key_fact_found(a.answer, r["key_fact"])
        )

    report = {
        "questions": len(rows),
        "same_shown_answer_and_mode": same,
        "drafts": {
            str(d): sum(1 for a in answers[d] if a.generation and a.generation.text)
            for d in answers
        },
        "key_fact_in_answer": {str(d): key_facts(d) for d in answers},
        "seconds_for_all": {str(d): seconds[d] for d in answers},
        "differ": [r["qid"] for r, (a, b) in zip(rows, pairs, strict=True) if a.answer != b.answer],
    }
    print(json.dumps(report, indent=2))
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
