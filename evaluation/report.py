"""The evaluation report: ``report.md``, PNG plots (matplotlib, Agg) and per-question JSONL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RETRIEVAL_KEYS = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_f(v) for v in row) + " |" for row in rows]
    return out + [""]


def _systems(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    systems = [("clinrag", summary["clinrag"])]
    if summary.get("baseline"):
        systems.append((f"{summary['baseline']['name']} recipe", summary["baseline"]))
    return systems


def write_report(
    summary: dict[str, Any], records: Sequence[dict[str, Any]], out_dir: Path
) -> list[Path]:
    """Write the report into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        plots = _plots(summary, out_dir)
    except ImportError:
        plots = []
        summary.setdefault("notes", []).append(
            "matplotlib is not installed, so the report has no plots (pip install matplotlib)."
        )
    written += plots
    md = out_dir / "report.md"
    md.write_text(render_markdown(summary, [p.name for p in plots]), encoding="utf-8")
    written.append(md)
    per_q = out_dir / "per_question.jsonl"
    with per_q.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    written.append(per_q)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    written.append(out_dir / "summary.json")
    return written


def render_markdown(summary: dict[str, Any], plots: Sequence[str] = ()) -> str:
    q = summary["questions"]
    lines = [
        f"# clinrag evaluation: {Path(summary['folder']).name}",
        "",
        f"- data: `{summary['folder']}` ({summary['corpus']['documents']} documents, corpus "
        f"sha256 {summary['corpus']['sha256'][:16]}"
        + (
            f"; {held} held out by --unanswerable"
            if (held := summary["corpus"].get("held_out_documents"))
            else ""
        )
        + ")",
        f"- questions: {q['evaluated']} of {q['in_file']} (limit {summary['limit']}, seed "
        f"{summary['seed']}); {q['answerable']} answerable, {q['unanswerable']} unanswerable",
        f"- metrics: {', '.join(summary['metrics'])}; settings: "
        + ", ".join(f"{k} {v}" for k, v in summary["settings"].items()),
        f"- wall time {summary['wall_seconds']:.1f} s; cached parts reused "
        f"{summary['cache']['reused'] or 'none'}, computed "
        f"{summary['cache']['computed'] or 'none'}",
        "",
    ]
    if summary.get("baseline"):
        lines += [f"Baseline: {summary['baseline']['recipe']}.", ""]
    systems = _systems(summary)
    if any("retrieval" in s for _, s in systems):
        lines += [
            "## Retrieval (document level)",
            "",
            "Gold documents among the first documents retrieved (chunks deduplicated by "
            "document, first rank kept).",
            "",
        ]
        rows = [
            [name, s["retrieval"]["n"], *(s["retrieval"].get(k) for k in RETRIEVAL_KEYS)]
            for name, s in systems
            if "retrieval" in s
        ]
        lines += _table(["system", "questions", *RETRIEVAL_KEYS], rows)
    if any("answer" in s for _, s in systems):
        lines += ["## Answers", ""]
        rows = []
        for name, s in systems:
            a = s.get("answer") or {}
            d, t = a.get("decision") or {}, a.get("text") or {}
            rows.append(
                [
                    name,
                    d.get("n"),
                    d.get("accuracy"),
                    d.get("accuracy_answered"),
                    t.get("n"),
                    t.get("token_f1"),
                    t.get("rouge_l"),
                ]
            )
        lines += _table(
            [
                "system",
                "yes/no/maybe questions",
                "accuracy",
                "accuracy (answered)",
                "free-text answers",
                "token F1",
                "ROUGE-L",
            ],
            rows,
        )
        lines += [
            "The decision is parsed from the answer text (leading yes/no, hedges -> maybe, "
            "negations -> no, else maybe); an abstention counts as wrong in `accuracy`. "
            "Token F1 and ROUGE-L compare answers that were given with `long_answer`.",
            "",
        ]
        for name, s in systems:
            d = (s.get("answer") or {}).get("decision")
            if d:
                cols = list(next(iter(d["confusion"].values())))
                lines += [f"Confusion matrix, {name} (rows gold, columns predicted):", ""]
                lines += _table(
                    ["gold", *cols], [[g, *row.values()] for g, row in d["confusion"].items()]
                )
        for name, s in systems:
            if "modes" in s:
                lines += [f"Answer modes, {name}: {s['modes']}", ""]
    c = summary["clinrag"].get("citations")
    if c:
        lines += ["## Citations and abstention (clinrag)", ""]
        lines += _table(
            ["metric", "value"],
            [
                ["citation precision (cited chunks from gold documents)", c["precision"]],
                ["citation recall (answerable questions citing a gold document)", c["recall"]],
                ["unsupported-sentence rate (answers given)", c["unsupported_rate"]],
                [f"abstention rate ({c['unanswerable']} unanswerable)", c["abstention_rate"]],
                [
                    f"false-abstention rate ({c['answerable']} answerable)",
                    c["false_abstention_rate"],
                ],
                ["citations counted", c["citations"]],
            ],
        )
    b = (summary.get("baseline") or {}).get("abstention")
    if b:
        lines += [
            f"Baseline abstention (answers saying they don't know): on unanswerable "
            f"{_f(b['abstention_rate'])}, on answerable {_f(b['false_abstention_rate'])}.",
            "",
        ]
    lines += _question_set_section(summary, systems)
    att = summary["clinrag"].get("attribution")
    if att:
        lines += [
            "## Attribution faithfulness (clinrag)",
            "",
            "Drop in log p(answer) when the top-k source sentences by each method are removed, "
            "against removing k random ones (nats; higher top-k drop = more faithful).",
            "",
        ]
        lines += _table(
            ["method", "answers", "top-k drop", "random drop", "difference", "top > random"],
            [
                [k, v["n"], v["top_k_drop"], v["random_drop"], v["difference"], v["win_rate"]]
                for k, v in att.items()
            ],
        )
    lines += ["## Latency (seconds)", ""]
    rows = []
    for name, s in systems:
        for stage, v in s.get("latency", {}).items():
            rows.append([name, stage, v["n"], v["p50"], v["p95"]])
    lines += _table(["system", "stage", "n", "p50", "p95"], rows)
    if summary.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in summary["notes"]], ""]
    if plots:
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _question_set_section(
    summary: dict[str, Any], systems: Sequence[tuple[str, dict[str, Any]]]
) -> list[str]:
    """Key facts, cited documents, verification and yes/no: the question-set figures."""
    if not any("key_fact" in s or "yes_no" in s for _, s in systems):
        return []

    def get(s: dict[str, Any], *path: str) -> Any:
        for key in path:
            s = s.get(key) if isinstance(s, dict) else None  # type: ignore[assignment]
        return s

    kf = [get(s, "key_fact", "n") for _, s in systems]
    figures = [
        (f"key fact in the first sentence ({kf[0]} answerable)", ("key_fact", "in_first_sentence")),
        ("key fact anywhere in the answer", ("key_fact", "anywhere")),
        ("citation precision (cited documents expected / cited, answers given)",
         ("documents_cited", "precision")),
        ("answers citing an expected document", ("documents_cited", "answers_citing_expected")),
        ("abstention on off-library questions (target 1)", ("abstention", "abstention_rate")),
        ("false abstention on answerable questions", ("abstention", "false_abstention_rate")),
        ("unsupported-sentence rate (refused / drafted, answers given)",
         ("verification", "unsupported_rate")),
        ("sentences shown although refused (target 0)", ("verification", "shown_unsupported")),
        ("sentences removed as unsupported", ("verification", "removed")),
        ("yes/no accuracy", ("yes_no", "accuracy")),
    ]  # fmt: skip
    lines = [
        "## Question set: key facts, citations, verification",
        "",
        "A key fact is found when its phrasings occur as whole words after normalisation "
        "(case, hyphens, number words as digits); an abstention holds none. Yes/no reads the "
        "answer's decision when it made one, else its text (`parse_decision`); an abstention "
        "is wrong. The recipe cites nothing and drafts no checked sentences (-).",
        "",
    ]
    lines += _table(
        ["figure", *(name for name, _ in systems)],
        [[label, *(get(s, *path) for _, s in systems)] for label, path in figures],
    )
    by_type = [(name, get(s, "key_fact", "by_type")) for name, s in systems]
    for name, types in by_type:
        if types:
            lines += [f"Key fact by question type, {name}:", ""]
            lines += _table(
                ["type", "questions", "first sentence", "anywhere"],
                [[t, v["n"], v["in_first_sentence"], v["anywhere"]] for t, v in types.items()],
            )
    rows = summary.get("per_question") or []
    if rows:
        lines += _per_question_table(rows, [name for name, _ in systems])
    return lines


def _mark(v: Any) -> str:
    return "–" if v is None else ("yes" if v else "**no**")


def _per_question_table(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> list[str]:
    has_baseline = any("baseline" in r for r in rows)
    headers = ["qid", "type", "question", "mode", "key fact 1st / any", "cited"]
    headers += ["removed / shown unsupported", "yes/no (expected)", "first sentence"]
    if has_baseline:
        headers += ["recipe key fact 1st / any", "recipe yes/no"]
    out = [
        "## Per question",
        "",
        "Misses in bold (a cited document in bold was not expected). Every row, with the "
        "whole answer, is in `summary.json` "
        "(`per_question`) and `per_question.jsonl`.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]

    def cell(text: Any) -> str:
        return " ".join(str(text or "").split()).replace("|", "\\|")

    for r in rows:
        c = r.get("clinrag") or {}
        kf = (
            f"{_mark(c.get('key_fact_first'))} / {_mark(c.get('key_fact_anywhere'))}"
            if "key_fact_first" in c
            else "–"
        )
        wrong = set(c.get("cited_unexpected") or [])
        cited_cell = (
            ", ".join(f"**{d}**" if d in wrong else d for d in c["cited"]) if "cited" in c else "–"
        )
        if r["type"] == "off_library":
            kf = "abstained" if c.get("abstained") else "**answered**"
        verified = (
            f"{c.get('removed', 0)} / {c['shown_unsupported']}" if "shown_unsupported" in c else "–"
        )
        if c.get("shown_unsupported"):
            verified = f"**{verified}**"
        decision = "–"
        if r.get("expected_decision"):
            d = c.get("decision")
            decision = f"{d if c.get('decision_right') else f'**{d}**'} ({r['expected_decision']})"
        first = cell(c.get("first_sentence"))
        line = [r["qid"], r["type"] or "", cell(r["question"]), c.get("mode") or "–", kf]
        line += [cited_cell, verified, decision, first[:160] + ("…" if len(first) > 160 else "")]
        if has_baseline:
            b = r.get("baseline") or {}
            bkf = (
                f"{_mark(b.get('key_fact_first'))} / {_mark(b.get('key_fact_anywhere'))}"
                if "key_fact_first" in b
                else "–"
            )
            if r["type"] == "off_library":
                bkf = "abstained" if b.get("abstained") else "**answered**"
            bd = "–"
            if r.get("expected_decision") and "decision" in b:
                bd = b["decision"] if b.get("decision_right") else f"**{b['decision']}**"
            line += [bkf, bd]
        out.append("| " + " | ".join(str(x) for x in line) + " |")
    return out + [""]


def _plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    systems = _systems(summary)
    ret = [(name, s["retrieval"]) for name, s in systems if "retrieval" in s]
    if ret:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(ret)
        for i, (name, r) in enumerate(ret):
            xs = [j + i * width for j in range(len(RETRIEVAL_KEYS))]
            ax.bar(xs, [r.get(k) or 0.0 for k in RETRIEVAL_KEYS], width, label=name)
        ax.set_xticks([j + width * (len(ret) - 1) / 2 for j in range(len(RETRIEVAL_KEYS))])
        ax.set_xticklabels(RETRIEVAL_KEYS)
        ax.set_ylim(0, 1.18)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_title("Retrieval (document level)")
        ax.legend(loc="upper center", ncol=len(ret), frameon=False)
        written.append(_save(fig, out_dir / "retrieval.png"))
    lat = [
        (f"{name}: {stage}", v)
        for name, s in systems
        for stage, v in s.get("latency", {}).items()
        if v["p50"] is not None
    ]
    if lat:
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(lat) + 1.2))
        ys = list(range(len(lat)))
        ax.barh([y + 0.2 for y in ys], [v["p50"] for _, v in lat], 0.4, label="p50")
        ax.barh([y - 0.2 for y in ys], [v["p95"] for _, v in lat], 0.4, label="p95")
        ax.set_yticks(ys)
        ax.set_yticklabels([label for label, _ in lat], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title("Latency per stage")
        ax.legend()
        written.append(_save(fig, out_dir / "latency.png"))
    conf = [
        (name, s["answer"]["decision"])
        for name, s in systems
        if (s.get("answer") or {}).get("decision")
    ]
    if conf:
        fig, axes = plt.subplots(1, len(conf), figsize=(4.2 * len(conf), 3.4), squeeze=False)
        for ax, (name, d) in zip(axes[0], conf, strict=True):
            rows = list(d["confusion"])
            cols = list(d["confusion"][rows[0]])
            grid = [[d["confusion"][g][p] for p in cols] for g in rows]
            ax.imshow(grid, cmap="Blues")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(j, i, str(v), ha="center", va="center")
            ax.set_xticks(range(len(cols)))
            ax.set_xticklabels(cols, fontsize=8)
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(rows)
            ax.set_xlabel("predicted")
            ax.set_ylabel("gold")
            ax.set_title(f"{name}: accuracy {_f(d['accuracy'], 2)}")
        written.append(_save(fig, out_dir / "confusion.png"))
    att = summary["clinrag"].get("attribution")
    if att:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = list(att)
        xs = list(range(len(names)))
        ax.bar(
            [x - 0.2 for x in xs], [att[k]["top_k_drop"] or 0 for k in names], 0.4, label="top-k"
        )
        ax.bar(
            [x + 0.2 for x in xs], [att[k]["random_drop"] or 0 for k in names], 0.4, label="random"
        )
        ax.set_xticks(xs)
        ax.set_xticklabels(names)
        ax.set_ylabel("drop in log p(answer), nats")
        ax.set_title("Attribution: top-k vs random removal")
        ax.legend()
        written.append(_save(fig, out_dir / "attribution.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
