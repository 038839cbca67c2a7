"""bm25s adapter: the lexical index. The only module that imports bm25s and Stemmer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.config import Settings


class BM25Index:
    """A BM25 index over texts, saved under ``folder`` and reused while ``version`` holds."""

    def __init__(self, settings: Settings) -> None:
        self._folder: Path = settings.cache_dir / "bm25" / settings.collection
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

    def load_or_build(
        self, version: str, items_fn: Callable[[], Sequence[tuple[str, str]]]
    ) -> None:
        """Load the saved index for ``version`` or build it from ``items_fn()``: (id, text)."""
        import bm25s

        if self.version == version:
            return
        stamp = self._folder / "version.json"
        if stamp.is_file() and json.loads(stamp.read_text()).get("version") == version:
            self._ids = json.loads((self._folder / "ids.json").read_text())
            self.size = len(self._ids)
            if self.size:
                self._retriever = bm25s.BM25.load(str(self._folder / "index"))
            self.version = version
            return
        items = items_fn()
        texts = [t for _, t in items]
        retriever = bm25s.BM25()
        if texts:
            tokens = bm25s.tokenize(
                list(texts), stopwords="en", stemmer=self._stem(), show_progress=False
            )
            retriever.index(tokens, show_progress=False)
        tmp = self._folder.with_name(self._folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if texts:
            retriever.save(str(tmp / "index"))
        self._ids = [i for i, _ in items]
        (tmp / "ids.json").write_text(json.dumps(self._ids))
        (tmp / "version.json").write_text(json.dumps({"version": version}))
        shutil.rmtree(self._folder, ignore_errors=True)
        tmp.rename(self._folder)
        self._retriever, self.size, self.version = retriever, len(texts), version

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
