"""Yes/no questions: detect them, and decide yes / no / uncertain from the cited passages.

The decision reads only library text: the passages the answer cites, verbatim, never the
model's free text. The answering model scores that evidence by teacher forcing
(``LogProbScorer``) in the "channel" direction (Min et al. 2022, noisy channel prompting):
how likely the evidence is after "The answer is yes" versus after "The answer is no". The
forward direction (how likely "Yes" is after the evidence) carried no signal with the
packaged 135M model on PubMedQA: it answers from its prior whatever the evidence says. In the
channel direction the model must account for every word of the evidence, so "did not reduce"
weighs towards no. Within ``yes_no_margin`` of the boundary (``yes_no_bias``) the decision is
``uncertain``. Both were fitted on questions of one half of PubMedQA and measured on the
other (``docs/benchmarks.md``); a count of negative-finding phrases in the evidence was tried
beside the score and got no weight there.

An LLM without log-probabilities (an OpenAI-compatible server) gets no decision: the answer
is generated as before and the reason logged, never guessed from the model's wording.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.backends.base import LogProbScorer, Message
from core.config import Settings
from core.types import Answer, Decision, DecisionLabel, Generation, SourceSentence

if TYPE_CHECKING:
    from assistant.cite import Quote
    from assistant.pipeline import Assistant
    from assistant.policy import Context

log = logging.getLogger(__name__)

METHOD = "channel-logprob"
OPTIONS = ("yes", "no")
# Sentences quoted for a yes/no answer; the decision reads their whole passages, at most
# MAX_PASSAGES of them, since the finding is rarely the sentence closest to the question.
EVIDENCE_SENTENCES = 3
MAX_PASSAGES = 3
PROMPT_NAME = "yes_no_v2"
_SYSTEM = "You report the findings of clinical studies and guidelines."
_USER = "Question: {question}\nThe answer is {option}. What does the evidence say?"
PROMPT_SHA256 = hashlib.sha256((_SYSTEM + "\n" + _USER).encode()).hexdigest()

_AUX = (
    "is|are|was|were|am|do|does|did|can|could|should|would|will|shall|may|might|must|"
    "has|have|had|isn't|aren't|wasn't|weren't|don't|doesn't|didn't|can't|cannot|couldn't|"
    "shouldn't|wouldn't|won't|hasn't|haven't|hadn't|it's"
)
_WH = r"what|which|when|where|who|whom|whose|why|how"
_AUX_FIRST = re.compile(rf"^[\s\"'(\[*_-]*(?:{_AUX})\b", re.I)
_WH_FIRST = re.compile(rf"^[\s\"'(\[*_-]*(?:{_WH})\b", re.I)
# "Is it safe, and when should it start?": a second question, not a yes/no one; a wh-word
# elsewhere is usually a subordinate clause ("...when assessing fitness?", "what to teach")
_WH_QUESTION = re.compile(rf"(?:,|\band\b|\bor\b)\s+(?:{_WH})(?:\s+\w+)?\s+(?:{_AUX})\b", re.I)
# Headline questions put the topic first: "Double balloon enteroscopy: is it safe?",
# "Metered-dose inhalers. Do providers know what to teach?", "Malnutrition, a new inducer of
# arterial calcification?", "Injury mortality--are there common factors?"
_CLAUSE_BREAK = re.compile(rf"(?::|\.\s|--|\s-\s|;|,\s+(?=(?:a|an|the|{_AUX})\b))", re.I)
# "Are they the same or different?", "Are ACE inhibitors or ARBs preferred?": a choice
_CHOICE = re.compile(
    r"\b(?:same|different|better|worse|prefer(?:red|able)?|superior|inferior|rather|more|"
    r"less)\b",
    re.I,
)


def _is_choice(clause: str) -> bool:
    return bool(re.search(r"\bor\b(?!\s+not\b)", clause, re.I) and _CHOICE.search(clause))


def is_yes_no(question: str) -> bool:
    """Whether the question asks for yes or no.

    Yes/no when a clause starts with an auxiliary verb ("Is aspirin recommended...",
    "Double balloon enteroscopy: is it safe?"), or, after a topic, asks a verbless question
    ("Aripiprazole: a new risk factor for pathological gambling?"). Not a wh-question ("When
    should screening start?", "Is it safe, and when should it start?") and not a choice
    ("Are they the same or different?"). A verbless question with no topic ("Gluten
    tolerance 20 years after diagnosis?") is not recognised: nothing in its words says it.
    """
    text = question.strip()
    clauses = [c.strip() for c in _CLAUSE_BREAK.split(text) if c.strip()]
    if not clauses:
        return False
    last = clauses[-1]
    if _WH_FIRST.match(last) or _WH_QUESTION.search(last) or _is_choice(last):
        return False
    if any(_AUX_FIRST.match(c) for c in clauses):
        return True
    return len(clauses) > 1 and text.endswith("?") and not any(_WH_FIRST.match(c) for c in clauses)


@dataclass(frozen=True)
class Scores:
    """log p(evidence | "The answer is yes") and log p(evidence | "The answer is no")."""

    yes: float
    no: float

    @property
    def shift(self) -> float:
        """How much likelier the evidence is under "yes" than under "no" (log-odds)."""
        return self.yes - self.no


def messages(question: str, option: str) -> list[Message]:
    """The scoring prompt for one option; the evidence is what the model is scored on."""
    user = _USER.format(question=question.strip(), option=option)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def score(llm: LogProbScorer, question: str, evidence: Sequence[str]) -> Scores:
    """Teacher-forced log-probability of the evidence after each option."""
    prompts = [messages(question, option) for option in OPTIONS]
    lp = llm.logprobs(prompts, [" ".join(evidence)])[:, 0]
    return Scores(float(lp[0]), float(lp[1]))


def label(shift: float, *, bias: float, margin: float) -> DecisionLabel:
    """yes above ``bias + margin``, no below ``bias - margin``, uncertain between."""
    if shift > bias + margin:
        return DecisionLabel.YES
    if shift < bias - margin:
        return DecisionLabel.NO
    return DecisionLabel.UNCERTAIN


def decide(
    llm: object, question: str, evidence: Sequence[SourceSentence], settings: Settings
) -> Decision | None:
    """The decision from these evidence sentences, or None when it cannot be made.

    None when there is no evidence or the LLM cannot score options (no ``logprobs``); the
    reason is logged. Nothing but the question and ``evidence`` reaches the model.
    """
    if not evidence:
        log.info("yes/no decision skipped: no verified evidence")
        return None
    if not isinstance(llm, LogProbScorer):
        log.info("yes/no decision skipped: %s has no log-probabilities", type(llm).__name__)
        return None
    scores = score(llm, question, [s.text for s in evidence])
    return Decision(
        label=label(scores.shift, bias=settings.yes_no_bias, margin=settings.yes_no_margin),
        probabilities={
            "log_p_yes": round(scores.yes, 4),
            "log_p_no": round(scores.no, 4),
            "shift": round(scores.shift, 4),
        },
        evidence=[s.index for s in evidence],
        method=METHOD,
    )


def cited(decision: Decision, answer: Answer) -> list[int]:
    """The citation numbers the reader sees for the passages the decision read, in order."""
    # citations carry the number shown (label) beside the source number (n) when numbered
    shown = {c.n: (getattr(c, "label", 0) or c.n) for c in answer.citations}
    out: list[int] = []
    for i in decision.evidence:
        if 0 <= i < len(answer.source_sentences):
            n = answer.source_sentences[i].n
            label = shown.get(n, n)
            if label not in out:
                out.append(label)
    return out


def describe(decision: Decision, answer: Answer) -> str:
    """One line for the reader: "Decision: yes (from [1], [2])"."""
    refs = ", ".join(f"[{n}]" for n in cited(decision, answer))
    return f"Decision: {decision.label}" + (f" (from {refs})" if refs else "")


# ------------------------------------------------------------------ answers without free text


def passages_read(
    quotes: Sequence[Quote], sources: Sequence[SourceSentence]
) -> list[SourceSentence]:
    """Every sentence of the passages the quotes come from (at most ``MAX_PASSAGES``), in
    passage order: the cited passages, verbatim."""
    passages: list[int] = []
    for q in quotes:
        for i in q.indices:
            if sources[i].n not in passages:
                passages.append(sources[i].n)
    chosen = set(passages[:MAX_PASSAGES])
    return [s for s in sources if s.n in chosen]


def answer(assistant: Assistant, ctx: Context) -> Answer | None:
    """The answer to a yes/no question without free-text generation, or None to generate.

    Called once the abstention checks before generation have passed. The decision and its
    evidence are the answer: the guideline's (or abstract's) sentences that best match the
    question, quoted and cited, with the decision, read from their whole passages, on top.
    The packaged 135M model's own wording is the less accurate one (it failed verification on
    most PubMedQA questions, and parsed as "maybe" when quoted), and skipping it saves the
    generation, about 6 of the 6.5 seconds of an answer on a CPU. Off when
    ``yes_no_decisions`` is off or the LLM cannot score options; the quoting bar
    (``quote_min_evidence``) applies: with no sentence that clearly answers, nothing is
    decided.
    """
    from assistant import policy
    from assistant.cite import quote_answer, quotes_for

    settings, llm = assistant.settings, assistant.llm
    question, hits, timings = ctx.question, ctx.hits, ctx.timings
    if not (settings.yes_no_decisions and is_yes_no(question)) or not isinstance(
        llm, LogProbScorer
    ):
        return None
    t = time.perf_counter()
    quotes = quotes_for(question, hits, assistant.embed, ctx.sources, limit=EVIDENCE_SENTENCES)
    timings["citation"] = time.perf_counter() - t
    evidence = [q.evidence for q in quotes]
    if not policy.strong_evidence(evidence, settings):
        # as in the policy's fallback: no passage clearly answers, so nothing is quoted
        best = max((e.score for e in evidence), default=0.0)
        weak = policy.Reason(policy.ReasonCode.WEAK_RETRIEVAL, f"best evidence sentence {best:.2f}")
        return policy.abstained(ctx, weak, evidence=evidence)
    quote = quote_answer(quotes, hits, limit=EVIDENCE_SENTENCES)
    t = time.perf_counter()
    read = passages_read(quotes, ctx.sources)
    prompts = [messages(question, option) for option in OPTIONS]
    # The model's part in this answer is scoring the evidence under each option; it is
    # recorded as its generation (empty text: it wrote nothing), so the record names the
    # model and the prompt.
    scoring = Generation(
        text="",
        model=llm.info,
        prompt_hash=hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest(),
        template=f"{PROMPT_NAME}:{PROMPT_SHA256}",
        decoding={"teacher_forced": "evidence", "options": list(OPTIONS), "max_new_tokens": 0},
        seconds=0.0,
    )
    out = policy.quoted(
        ctx,
        scoring,
        sentences=quote.sentences,
        evidence=quote.evidence,
        unverified=[],
    )
    out.decision = decide(llm, question, read, settings)
    scoring.seconds = timings["decision"] = time.perf_counter() - t
    return out
