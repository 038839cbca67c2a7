"""bm25s adapter: the lexical index. The only module that imports bm25s and Stemmer."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.publish import MARKER, is_published, publish_dir

if TYPE_CHECKING:
    from core.config import Settings


class BM25Index:
    """A BM25 index over texts, saved under ``folder`` and reused while ``version`` holds.

    Each index version is its own folder (``v-<hash of version>``), published through
    :mod:`core.publish` under one lock per collection: processes that start together build it
    once, and a process loading one version never has its files replaced under it.
    """

    def __init__(self, settings: Settings) -> None:
        self._root: Path = settings.cache_dir / "bm25" / settings.collection
        self._retriever: Any = None
        self._stemmer: Any = None
        self.version: str | None = None
        self.size = 0
        self._ids: list[str] = []

    def _stem(self) -> Any:
        if self._stemmer is None:
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")
        return self._stemmer

    def _folder(self, version: str) -> Path:
        return self._root / f"v-{hashlib.sha256(version.encode()).hexdigest()[:16]}"

    def load_or_build(
        self, version: str, items_fn: Callable[[], Sequence[tuple[str, str]]]
    ) -> None:
        """Load the saved index for ``version`` or build it from ``items_fn()``: (id, text)."""
        import bm25s

        if self.version == version:
            return
        folder = self._folder(version)
        built: list[Any] = []

        def build(tmp: Path) -> None:
            self._prune(keep=tmp)
            items = items_fn()
            texts = [t for _, t in items]
            retriever = bm25s.BM25()
            if texts:
                tokens = bm25s.tokenize(
                    list(texts), stopwords="en", stemmer=self._stem(), show_progress=False
                )
                retriever.index(tokens, show_progress=False)
                retriever.save(str(tmp / "index"))
            ids = [i for i, _ in items]
            (tmp / "ids.json").write_text(json.dumps(ids))
            built.extend([retriever, ids])

        publish_dir(
            folder,
            build,
            what="building the keyword index",
            meta={"version": version},
            lock=self._root.with_name(f".{self._root.name}.lock"),
        )
        if built:
            self._retriever, self._ids = built
        else:
            self._ids = json.loads((folder / "ids.json").read_text())
            self._retriever = bm25s.BM25.load(str(folder / "index")) if self._ids else None
        self.size, self.version = len(self._ids), version

    def _prune(self, keep: Path) -> None:
        """Keep only the newest published version (the one about to be published joins it):
        a process still loading it is not disturbed. Runs under the collection's lock, so
        everything else here, older versions and builds abandoned by killed processes, is
        unused; so are the files of the single-folder layout of older clinrag versions."""
        shutil.rmtree(self._root.with_name(self._root.name + ".tmp"), ignore_errors=True)
        if not self._root.is_dir():
            return
        published = [p for p in self._root.iterdir() if p.name.startswith("v-") and is_published(p)]
        newest = max(published, key=lambda p: (p / MARKER).stat().st_mtime, default=None)
        for entry in self._root.iterdir():
            if entry in (newest, keep):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def stem(self, words: Sequence[str]) -> list[str]:
        return list(self._stem().stemWords(list(words)))

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """(id, score) pairs, best first."""
        import bm25s

        if not self.size or k <= 0:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self._stem(), show_progress=False)
        if not tokens.ids or not len(tokens.ids[0]):
            return []
        docs, scores = self._retriever.retrieve(
            tokens, k=min(k, self.size), show_progress=False, n_threads=1
        )
        pairs = zip(np.ravel(docs), np.ravel(scores), strict=True)
        return [(self._ids[int(d)], float(s)) for d, s in pairs if s > 0]
