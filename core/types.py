"""clinrag's own data types. No LangChain, Chroma or torch type crosses a module boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Block:
    """A run of text with one position in the document: a paragraph under a heading on a page."""

    text: str
    section: tuple[str, ...] = ()
    page: int | None = None


@dataclass
class Document:
    """A loaded file. ``text`` is the blocks joined by blank lines; offsets index into it."""

    doc_id: str
    title: str
    source_path: str
    sha256: str
    blocks: list[Block]
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    text: str
    title: str
    section: str
    page: int | None
    char_start: int
    char_end: int
    doc_sha256: str
    source_path: str
    ingested_at: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def content_hash(self) -> str:
        import hashlib

        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass
class Hit:
    """A retrieved chunk with every stage's score kept for the audit record."""

    chunk: Chunk
    score: float
    dense_score: float | None = None
    dense_rank: int | None = None
    bm25_score: float | None = None
    bm25_rank: int | None = None
    rerank_score: float | None = None


@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    model: str
    weights_hash: str
    dim: int
    # Recorded for the audit, not part of index compatibility: bf16 and fp32 vectors of the same
    # weights agree to cosine 0.9999, so an index moves between machines of either kind.
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelInfo:
    backend: str
    model_id: str
    weights_hash: str


@dataclass
class Generation:
    text: str
    model: ModelInfo
    prompt_hash: str
    template: str
    decoding: dict[str, Any]
    seconds: float
    first_token_seconds: float | None = None
    tokens: int = 0


@dataclass
class SourceSentence:
    """One sentence of one retrieved chunk: the unit that citations and attribution point at."""

    index: int
    n: int  # the 1-based source number shown in the prompt
    chunk_id: str
    text: str


class Origin(StrEnum):
    """Who wrote an answer sentence."""

    MODEL = "model"  # the model's wording, verified against its evidence
    QUOTE = "quote"  # a guideline sentence, quoted verbatim


@dataclass
class AnswerSentence:
    text: str
    citations: list[int]
    supported: bool
    support: float
    evidence: list[int] = field(default_factory=list)  # SourceSentence indices
    origin: Origin = Origin.MODEL
    # why verification refused the sentence ("negation: ...", "number 45 not in evidence"),
    # empty when supported
    problems: list[str] = field(default_factory=list)


@dataclass
class Citation:
    n: int
    doc_id: str
    chunk_id: str
    title: str
    section: str
    page: int | None
    text: str
    score: float
    metadata: dict[str, str] = field(default_factory=dict)
    # The number a reader sees: 1, 2, 3 in order of first appearance in the shown answer
    # (``n`` is the prompt's source number, which attribution and sentences refer to); 0 when
    # not numbered for display (records written before labels).
    label: int = 0


@dataclass
class Evidence:
    n: int
    text: str
    doc_id: str
    title: str
    section: str
    page: int | None
    score: float


class Mode(StrEnum):
    """How an answer was produced; decided in one place, ``assistant.policy``."""

    GENERATED = "generated"  # the model's sentences, each verified against the sources and cited
    QUOTED = "quoted"  # the model's wording failed verification: guideline sentences quoted
    ABSTAINED = "abstained"  # no answer: the library does not support one
    # the model's verified sentences kept, what they leave out completed with quotes
    COMBINED = "combined"


class DecisionLabel(StrEnum):
    YES = "yes"
    NO = "no"
    UNCERTAIN = "uncertain"


@dataclass
class Decision:
    """The answer to a yes/no question, decided from the verified evidence only."""

    label: DecisionLabel
    # the probability of each option given only the evidence (the method's own scale)
    probabilities: dict[str, float]
    evidence: list[int]  # SourceSentence indices the decision read
    method: str


@dataclass
class Answer:
    question: str
    answer: str
    abstained: bool
    sentences: list[AnswerSentence]
    citations: list[Citation]
    evidence: list[Evidence]
    hits: list[Hit]
    source_sentences: list[SourceSentence]
    generation: Generation | None
    timings: dict[str, float]
    abstain_reason: str | None = None
    mode: Mode = Mode.GENERATED
    # Sentences removed from what a reader sees because verification refused them; kept for
    # the audit record. Every sentence in ``sentences`` is supported.
    unverified: list[AnswerSentence] = field(default_factory=list)
    decision: Decision | None = None
    # a follow-up question rewritten to stand alone (what retrieval used); None when unchanged
    resolved_question: str | None = None
    parent_id: int | None = None  # the audit record of the previous turn a follow-up refers to
    nearest_documents: list[dict[str, Any]] = field(default_factory=list)
    attribution: dict[str, Any] | None = None
    audit_id: int | None = None
    # the passages asked of retrieval (the record's top_k, what a replay asks again): ``hits``
    # may hold more, of the leading document (``leading_document_passages``)
    top_k: int | None = None


@dataclass(frozen=True)
class Actor:
    """Who performs an operation: recorded with its audit event, checked against its role."""

    user: str
    role: str
