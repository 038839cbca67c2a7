"""Library (admins): what the assistant can cite, adding documents, removing them."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.config import Settings
from core.errors import ClinragError, NotFoundError
from services import library
from services.accounts import User
from services.library import FileResult, currency_warnings
from ui.render import md_escape
from ui.session import actor, require

UPLOAD_TYPES = ["pdf", "html", "htm", "md", "markdown", "txt", "text", "docx", "json"]


def render(settings: Settings, user: User | None) -> None:
    user = require(user, "Library")
    st.header("Library")
    flash = st.session_state.pop("library_flash", None)
    if flash:
        st.success(md_escape(flash))
    docs = library.documents(settings, actor(user))
    _table(docs)
    st.divider()
    _upload(settings, user)
    st.divider()
    _remove(settings, user, docs)


def _table(docs: list[dict[str, Any]]) -> None:
    if not docs:
        st.info("The library is empty. Upload guideline files below.")
        return
    rows = []
    notes: list[str] = []
    for d in docs:
        meta = d["metadata"]
        warnings = [*(d.get("warnings") or []), *currency_warnings(d["doc_id"], docs)]
        notes.extend(f"{d['title']} ({d['doc_id']}): {w}" for w in warnings)
        rows.append(
            {
                "title": d["title"],
                # next to the title: as the last of ten columns it was off-screen at 1400 px
                "warnings": "; ".join(warnings),
                "doc_id": d["doc_id"],
                "issuing body": meta.get("issuing_body", ""),
                "published": meta.get("publication_date", ""),
                "version": meta.get("version", ""),
                "supersedes": meta.get("supersedes", ""),
                "chunks": d["n_chunks"],
                "ingested": d["ingested_at"],
            }
        )
    if notes:
        # wrapped in full above the table, where a table cell would cut them
        st.warning(
            "\n".join(f"- {md_escape(line)}" for line in notes),
            icon=":material/warning:",
        )
    st.caption(f"{len(docs)} documents, {sum(d['n_chunks'] for d in docs)} chunks.")
    st.dataframe(rows, hide_index=True, width="stretch", key="library_table")


def _upload(settings: Settings, user: User) -> None:
    st.subheader("Add documents")
    st.caption(
        "PDF, HTML, Markdown, text or Word files, names of up to "
        f"{library.MAX_UPLOAD_NAME} characters. Metadata (issuing body, date, version, "
        "supersedes, restricted roles) comes from front matter in Markdown and text files, "
        "`<meta>` tags in HTML, or a NAME.meta.json file uploaded with the document (or on its "
        "own, to change it). A file whose metadata has a mistake is refused, never added "
        "without it."
    )
    # a new key after each ingest empties the uploader
    round_ = st.session_state.setdefault("upload_round", 0)
    files = st.file_uploader(
        "Guideline files",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key=f"uploads-{round_}",
    )
    clicked = st.button("Add to library", disabled=not files, type="primary", key="ingest")
    if clicked:
        _ingest(settings, user, files or [])
    result = st.session_state.get("library_result")
    if result:
        _show_result(result)


def _ingest(settings: Settings, user: User, files: list[Any]) -> None:
    try:
        paths = library.save_uploads(settings, actor(user), [(f.name, f.getvalue()) for f in files])
    except ValueError as exc:  # a name refused: the message names it and says what to do
        st.error(md_escape(str(exc)))
        return
    except OSError as exc:
        st.error(md_escape(f"The files could not be saved: {exc}"))
        return
    progress = st.progress(0.0, text="Reading and indexing...")
    done: list[FileResult] = []
    total = max(sum(1 for p in paths if not p.name.endswith(".meta.json")), 1)

    def on_file(result: FileResult) -> None:
        done.append(result)
        name = result.path.rsplit("/", 1)[-1]
        progress.progress(
            min(len(done) / total, 1.0), text=md_escape(f"{len(done)}/{total}: {name}")
        )

    try:
        with st.spinner("Indexing..."):
            summary = library.add(
                settings, actor(user), paths, source="upload", on_file=on_file, progress=False
            )
    except ClinragError as exc:
        st.error(md_escape(str(exc)))
        return
    data = summary.to_dict()
    st.session_state["library_result"] = {
        "message": (
            f"Added {data['added']}, updated {data['updated']}, unchanged {data['unchanged']}, "
            f"failed {data['failed']}; {data['chunks']} chunks written."
        ),
        "rows": [
            {
                "file": r.path.rsplit("/", 1)[-1],
                "status": r.status,
                "doc_id": r.doc_id or "",
                "chunks": r.chunks,
                "problem": " ".join(x for x in (r.reason, r.detail) if x),
                "warnings": "; ".join(r.warnings),
            }
            for r in summary.results
        ],
        "failed": [f"{r.path.rsplit('/', 1)[-1]}: {r.reason} ({r.detail})" for r in summary.failed],
    }
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
    st.rerun()  # the table above now lists the new documents


def _show_result(result: dict[str, Any]) -> None:
    (st.warning if result["failed"] else st.success)(result["message"])
    st.dataframe(result["rows"], hide_index=True, width="stretch")
    for line in result["failed"]:
        st.error(md_escape(line))


def _remove(settings: Settings, user: User, docs: list[dict[str, Any]]) -> None:
    st.subheader("Remove a document")
    if not docs:
        return
    titles = {d["doc_id"]: d["title"] for d in docs}
    doc_id = st.selectbox(
        "Document",
        list(titles),
        format_func=lambda d: f"{titles[d]} ({d})",
        index=None,
        key="remove_doc",
    )
    confirm = st.checkbox("Yes, the assistant must no longer cite it", key="remove_confirm")
    if not st.button("Remove", disabled=not (doc_id and confirm), key="remove_button"):
        return
    try:
        library.remove(settings, actor(user), str(doc_id))
    except NotFoundError:
        st.warning(md_escape(f"{doc_id} was not in the library any more."))
        return
    except ClinragError as exc:
        st.error(md_escape(str(exc)))
        return
    st.session_state["library_flash"] = f"Removed {doc_id}."
    st.rerun()
