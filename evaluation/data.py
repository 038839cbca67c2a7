"""The evaluation data set and its isolated library.

A data set folder holds ``corpus.jsonl`` (``{doc_id, title, text, source, url}``) and
``questions.jsonl`` (``{qid, question, gold_doc_ids, answer, long_answer}``). The corpus is
ingested through clinrag's real ingestion path into a store of its own under
``settings.home / "eval" / <corpus sha256[:16]>``, never into the user's library: each row is
written as a Markdown file whose front matter carries ``doc_id`` and ``title``, and the folder
is ingested with ``ingest.index.ingest``. clinrag slugs doc ids (``PMID:123`` ->
``pmid-123``) and suffixes clashes, so the store keeps a map back to the corpus ids.

A *question set* folder instead holds ``manifest.json`` (``{"name", "library", "questions"}``):
its questions are asked of a library folder of real files (any format clinrag ingests, with
their front matter or sidecar metadata), ingested as they are into the same kind of isolated
store, so a site can measure clinrag on its own guidelines. ``library`` is a path relative to
the manifest's folder (or absolute); gold doc ids are the ids ingest gives those files. Its
questions may carry a ``type`` (guideline, yes_no, off_library) and a ``key_fact``: a list of
terms, each a list of acceptable phrasings (``evaluation.metrics.key_fact_found``), all
required unless ``key_fact_min`` says how many.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Settings, load_settings
from core.errors import ClinragError

if TYPE_CHECKING:
    from ingest.index import IngestSummary

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
STORE_FORMAT = 1  # bump when the way the eval library is written or ingested changes
MANIFEST = "manifest.json"  # marks a question set over a library folder
QUESTION_TYPES = ("guideline", "yes_no", "off_library")


class EvalDataError(ClinragError):
    """The evaluation folder is missing or malformed."""


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    gold: tuple[str, ...]
    answer: str | None = None
    long_answer: str | None = None
    kind: str | None = None  # a question set's ``type``: one of QUESTION_TYPES
    # terms the answer must contain, each a tuple of acceptable phrasings
    key_fact: tuple[tuple[str, ...], ...] = ()
    key_fact_min: int | None = None  # how many terms suffice (None: all)

    @property
    def answerable(self) -> bool:
        return bool(self.gold)

    @property
    def source_qid(self) -> str:
        """The qid as questions.jsonl writes it (``load_dataset`` numbers repeats ``#k``)."""
        return self.qid.split("#", 1)[0]


@dataclass
class Dataset:
    folder: Path
    corpus: list[dict[str, Any]]
    questions: list[Question]
    corpus_sha256: str  # of corpus.jsonl, or of it and the held-out ids (``hold_out``)
    held_out: int = 0  # corpus rows left out of the library by ``hold_out``
    library: Path | None = None  # a question set's folder of real files, ingested as they are

    @property
    def key(self) -> str:
        return self.corpus_sha256[:16]


@dataclass
class EvalLibrary:
    """The ingested corpus: settings whose home is the isolated store, and the id map."""

    settings: Settings
    doc_map: dict[str, str]  # clinrag doc_id -> corpus doc_id
    root: Path  # settings.home / "eval" / <corpus key>
    built_now: bool = False
    failed: list[str] = field(default_factory=list)

    def corpus_id(self, clinrag_doc_id: str) -> str:
        return self.doc_map.get(clinrag_doc_id, clinrag_doc_id)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}:{n} is not valid JSON ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}:{n} must hold a JSON object.")
            rows.append(row)
    return rows


def load_dataset(folder: Path, settings: Settings | None = None) -> Dataset:
    """A corpus.jsonl folder, or a question set (``manifest.json``) over a library folder."""
    if (folder / MANIFEST).is_file():
        return load_question_set(folder, settings or load_settings(env={}))
    corpus_path, questions_path = folder / "corpus.jsonl", folder / "questions.jsonl"
    for path in (corpus_path, questions_path):
        if not path.is_file():
            raise EvalDataError(
                f"{path} does not exist. An evaluation folder holds corpus.jsonl "
                "({doc_id, title, text, ...}) and questions.jsonl ({qid, question, "
                f"gold_doc_ids, answer, long_answer}}), or a question set's {MANIFEST} "
                '({"library": FOLDER, "questions": FILE}).'
            )
    corpus = read_jsonl(corpus_path)
    for n, row in enumerate(corpus, start=1):
        if not row.get("doc_id") or not isinstance(row.get("text"), str):
            raise EvalDataError(f"{corpus_path} row {n} needs a doc_id and a text.")
    questions = read_questions(questions_path)
    return Dataset(folder, corpus, questions, hashlib.sha256(corpus_path.read_bytes()).hexdigest())


def read_questions(questions_path: Path) -> list[Question]:
    questions = []
    seen: Counter[str] = Counter()
    for n, row in enumerate(read_jsonl(questions_path), start=1):
        if not row.get("question") or row.get("qid") in (None, ""):
            raise EvalDataError(f"{questions_path} row {n} needs a qid and a question.")
        gold = row.get("gold_doc_ids") or []
        if not isinstance(gold, list):
            raise EvalDataError(f"{questions_path} row {n}: gold_doc_ids must be a list.")
        # Real sets repeat qids (MedQuAD numbers each source separately); the results cache is
        # keyed by qid, so the k-th repeat becomes "qid#k", stable in file order.
        qid = str(row["qid"])
        seen[qid] += 1
        if seen[qid] > 1:
            qid = f"{qid}#{seen[qid]}"
        questions.append(
            Question(
                qid=qid,
                question=str(row["question"]),
                gold=tuple(str(g) for g in gold),
                answer=None if row.get("answer") is None else str(row["answer"]),
                long_answer=None if row.get("long_answer") is None else str(row["long_answer"]),
                **_set_fields(row, f"{questions_path} row {n}"),
            )
        )
    return questions


def _set_fields(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A question set's own fields (type, key fact), checked: a typo must not score as a miss."""
    out: dict[str, Any] = {}
    kind = row.get("type")
    if kind is not None:
        if kind not in QUESTION_TYPES:
            raise EvalDataError(f"{where}: type must be one of {QUESTION_TYPES}, not {kind!r}.")
        if (kind == "off_library") != (not row.get("gold_doc_ids")):
            raise EvalDataError(f"{where}: off_library questions, and only they, have no gold.")
        # "maybe": the guideline leaves it to the case (grade C or I, "decide with the patient")
        if kind == "yes_no" and row.get("answer") not in ("yes", "no", "maybe"):
            raise EvalDataError(
                f'{where}: a yes_no question needs "answer": "yes", "no" or "maybe".'
            )
        out["kind"] = kind
    terms = row.get("key_fact") or []
    if not isinstance(terms, list) or not all(
        isinstance(t, list) and t and all(isinstance(p, str) and p.strip() for p in t)
        for t in terms
    ):
        raise EvalDataError(f"{where}: key_fact is a list of terms, each a list of phrasings.")
    if terms:
        from evaluation.metrics import normalise_fact

        empty = [p for t in terms for p in t if not normalise_fact(p)]
        if empty:
            raise EvalDataError(f"{where}: key_fact phrasing {empty[0]!r} matches nothing.")
        out["key_fact"] = tuple(tuple(t) for t in terms)
    least = row.get("key_fact_min")
    if least is not None:
        if not isinstance(least, int) or not 1 <= least <= len(terms):
            raise EvalDataError(f"{where}: key_fact_min must be between 1 and the terms given.")
        out["key_fact_min"] = least
    return out


def load_question_set(folder: Path, settings: Settings) -> Dataset:
    """A question set: ``manifest.json`` names the questions file and the library folder."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{path} is not valid JSON ({exc.msg}).") from exc
    if not isinstance(manifest, dict) or not manifest.get("library"):
        raise EvalDataError(f'{path} must name its library folder: {{"library": "FOLDER"}}.')
    library = (folder / str(manifest["library"])).resolve()
    if not library.is_dir():
        raise EvalDataError(f"{path}: the library folder {library} does not exist.")
    questions_path = folder / str(manifest.get("questions") or "questions.jsonl")
    if not questions_path.is_file():
        raise EvalDataError(f"{path}: the questions file {questions_path} does not exist.")
    corpus = library_corpus(library, settings)
    return Dataset(
        folder,
        corpus,
        read_questions(questions_path),
        library_sha256(library),
        library=library,
    )


def _library_files(library: Path) -> list[Path]:
    """The files ingest would read from ``library``, with the sidecars that describe them."""
    from ingest.index import iter_files
    from ingest.loaders.metadata import SIDECAR_SUFFIX

    files = [p for p in iter_files([library]) if p.is_file()]
    sidecars = [p.with_name(p.name + SIDECAR_SUFFIX) for p in files]
    return sorted(files + [p for p in sidecars if p.is_file()])


def library_sha256(library: Path) -> str:
    """One hash of every file ingest reads (and its sidecar): the store's and cache's key."""
    h = hashlib.sha256()
    for path in _library_files(library):
        h.update(path.relative_to(library).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def library_corpus(library: Path, settings: Settings) -> list[dict[str, Any]]:
    """The library's documents as corpus rows (doc id as ingest assigns it, title, text).

    Read with clinrag's loaders, so the recipe baseline sees the same text and gold ids can be
    checked; a file the loaders refuse is left out here and reported by the ingest.
    """
    from ingest.loaders import LoadError, load_document
    from ingest.loaders.metadata import SIDECAR_SUFFIX

    rows = []
    for path in _library_files(library):
        if path.name.endswith(SIDECAR_SUFFIX):
            continue
        try:
            doc = load_document(
                path,
                max_bytes=int(settings.max_file_mb * 1024 * 1024),
                max_pages=settings.max_pages,
            )
        except LoadError:
            continue
        text = "\n\n".join(b.text for b in doc.blocks)
        rows.append({"doc_id": doc.doc_id, "title": doc.title, "text": text, "path": str(path)})
    return rows


def sample_questions(
    questions: Sequence[Question], limit: int | None, seed: int = 0
) -> list[Question]:
    """A fixed seeded sample (all questions, in file order, when limit is None or too big)."""
    if limit is None or limit >= len(questions):
        return list(questions)
    if limit <= 0:
        raise EvalDataError("--limit must be a positive number of questions.")
    return random.Random(seed).sample(list(questions), limit)


def shared_doc_ids(corpus: Iterable[dict[str, Any]]) -> dict[str, int]:
    """{doc id: rows} for the ids that several corpus rows carry, in corpus order.

    MedQuAD has 4 ids for 23 passages on different diseases: a question whose gold is such an
    id has no single gold passage.
    """
    ids = Counter(str(row["doc_id"]) for row in corpus)
    return {d: n for d, n in ids.items() if n > 1}


def norm_title(title: Any) -> str:
    """A title as a topic key: case and spacing aside ("Choroideremia" == " choroideremia")."""
    return " ".join(str(title or "").lower().split())


def hold_out(
    dataset: Dataset, sample: Sequence[Question], n: int, seed: int = 0
) -> tuple[Dataset, list[Question]]:
    """Make ``n`` answerable questions of ``sample`` unanswerable by leaving their topic out.

    The topic is the questions' gold documents and every corpus document with the same title
    (MedQuAD has a passage per aspect of a disease; leaving a sibling in would keep the answer
    in the library). Any question whose gold documents all left becomes unanswerable too; the
    result has its own corpus hash, so it gets its own store and results cache.
    """
    if dataset.library is not None:
        raise EvalDataError(
            "--unanswerable works on corpus.jsonl folders; a question set over a library "
            "folder writes its off-library questions instead."
        )
    answerable = [q for q in sample if q.answerable]
    if n <= 0 or n > len(answerable):
        raise EvalDataError(
            f"--unanswerable {n}: choose between 1 and the {len(answerable)} answerable "
            "questions of the sample."
        )
    chosen = random.Random(f"hold-out:{seed}").sample(answerable, n)
    gold = {g for q in chosen for g in q.gold}
    titles = {
        norm_title(row.get("title"))
        for row in dataset.corpus
        if str(row["doc_id"]) in gold and norm_title(row.get("title"))
    }
    removed = {
        str(row["doc_id"])
        for row in dataset.corpus
        if str(row["doc_id"]) in gold or norm_title(row.get("title")) in titles
    }
    corpus = [row for row in dataset.corpus if str(row["doc_id"]) not in removed]

    def without_removed(q: Question) -> Question:
        left = tuple(g for g in q.gold if g not in removed)
        return q if left == q.gold else replace(q, gold=left)

    digest = hashlib.sha256(
        json.dumps([dataset.corpus_sha256, sorted(removed)]).encode()
    ).hexdigest()
    held = Dataset(
        dataset.folder,
        corpus,
        [without_removed(q) for q in dataset.questions],
        digest,
        held_out=len(dataset.corpus) - len(corpus),
    )
    return held, [without_removed(q) for q in sample]


def markdown_file(row: dict[str, Any]) -> str:
    """A corpus row as a library file: front matter (doc id, title), then its text."""
    title = " ".join(str(row.get("title") or "").split()) or str(row["doc_id"])
    doc_id = " ".join(str(row["doc_id"]).split())
    return f"---\ndoc_id: {doc_id}\ntitle: {title}\n---\n\n{row['text'].strip()}\n"


def write_library(
    rows: Iterable[dict[str, Any]],
    folder: Path,
    render: Callable[[dict[str, Any]], str] = markdown_file,
) -> dict[str, str]:
    """Write each corpus row as ``folder/<safe doc id>.md``; returns {file path: corpus doc id}.

    A file that already holds the same text is left alone, so a rebuild re-ingests nothing
    that did not change.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path_to_doc: dict[str, str] = {}
    used: set[str] = set()
    for row in rows:
        base = _SAFE_NAME.sub("_", str(row["doc_id"])).strip("._")[:100] or "doc"
        name, n = base, 1
        # file systems that ignore case would merge "A.md" and "a.md"
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        path = folder / f"{name}.md"
        text = render(row)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        path_to_doc[str(path)] = str(row["doc_id"])
    return path_to_doc


def corpus_doc_map(summary: IngestSummary, path_to_doc: dict[str, str]) -> dict[str, str]:
    """clinrag doc id -> corpus doc id for every file the library holds after ``summary``."""
    return {
        r.doc_id: path_to_doc.get(r.path, r.doc_id)
        for r in summary.results
        if r.doc_id and r.status in {"added", "updated", "unchanged"}
    }


def ingest_failures(summary: IngestSummary) -> list[str]:
    """One line per file that failed to ingest: its path, reason and detail."""
    return [f"{r.path}: {r.reason} {r.detail or ''}".strip() for r in summary.failed]


def ingest_key(settings: Settings) -> str:
    """What decides the chunks and vectors of the eval store."""
    parts = {
        "format": STORE_FORMAT,
        "chunk_chars": settings.chunk_chars,
        "overlap": settings.chunk_overlap_sentences,
        "embedder": settings.embedder,
        "embedder_model": settings.embedder_model,
        "vector_store": settings.vector_store,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def eval_root(settings: Settings, dataset: Dataset) -> Path:
    return settings.home / "eval" / dataset.key


def build_library(
    dataset: Dataset, settings: Settings, *, progress: bool = True, rebuild: bool = False
) -> EvalLibrary:
    """Ingest the corpus into its own store (once; later runs reuse it)."""
    import shutil

    root = eval_root(settings, dataset)
    home = root / f"index-{ingest_key(settings)}"
    # An isolated, embedded store: never the user's Chroma server or collection.
    eval_settings = settings.model_copy(
        update={"home": home, "chroma_url": None, "collection": "clinrag_eval"}
    )
    ready = home / "doc_map.json"
    if rebuild:
        shutil.rmtree(home, ignore_errors=True)
    if ready.is_file():
        return EvalLibrary(eval_settings, json.loads(ready.read_text(encoding="utf-8")), root)

    from ingest.index import ingest

    if dataset.library is not None:
        # real files as they are: the ids ingest gives them are the set's gold ids
        folder, path_to_doc = dataset.library, {}
    else:
        folder = root / "library"
        path_to_doc = write_library(dataset.corpus, folder)
    print(
        f"clinrag eval: ingesting {len(dataset.corpus)} documents into {home} (once) ...",
        file=sys.stderr,
    )
    summary = ingest([folder], eval_settings, progress=progress)
    doc_map = corpus_doc_map(summary, path_to_doc)
    ready.write_text(json.dumps(doc_map), encoding="utf-8")
    return EvalLibrary(
        eval_settings, doc_map, root, built_now=True, failed=ingest_failures(summary)
    )
