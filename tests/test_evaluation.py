"""clinrag eval: metric functions against hand-computed values, then end to end on a tiny corpus.

The fixture corpus and questions are written at test time into tmp_path (made up, not advice).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from evaluation import metrics as m
from ui.cli.eval import add_eval_parser, eval_command

# --- retrieval metrics ---------------------------------------------------------------------------


def test_dedupe_docs_keeps_first_rank() -> None:
    assert m.dedupe_docs(["a", "b", "a", "c", "b", "d"]) == ["a", "b", "c", "d"]
    assert m.dedupe_docs(["a", "a", "b", "c"], depth=2) == ["a", "b"]


def test_recall_mrr_ndcg_hand_computed() -> None:
    ranked = ["x", "g1", "y", "g2", "z"]
    gold = {"g1", "g2"}
    assert m.recall_at_k(ranked, gold, 1) == 0.0
    assert m.recall_at_k(ranked, gold, 2) == 0.5
    assert m.recall_at_k(ranked, gold, 5) == 1.0
    assert m.reciprocal_rank(ranked, gold) == 0.5
    assert m.reciprocal_rank(["x", "y"], gold) == 0.0
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert m.ndcg_at_k(ranked, gold, 10) == pytest.approx(dcg / idcg)
    assert m.ndcg_at_k(["g1"], {"g1"}, 10) == 1.0
    # a gold document below the cut-off does not count
    assert m.ndcg_at_k(["x", "y", "g1"], {"g1"}, 2) == 0.0
    with pytest.raises(ValueError):
        m.recall_at_k(ranked, set(), 5)


def test_retrieval_metrics_dedupe_and_skip_unanswerable() -> None:
    # chunk-level rankings: q1's gold is the 2nd document after deduplication (rank 3 chunk)
    rankings = [["a", "a", "g", "b"], ["g", "c"], ["a", "b"]]
    golds = [["g"], ["g"], []]  # the third question is unanswerable: left out
    out = m.retrieval_metrics(rankings, golds, ks=(1, 5, 10))
    assert out["n"] == 2
    assert out["recall@1"] == 0.5  # q1 misses at 1, q2 hits
    assert out["recall@5"] == 1.0
    assert out["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1) / 2)


def test_retrieval_metrics_none_when_no_answerable_question() -> None:
    out = m.retrieval_metrics([["a"]], [[]])
    assert out["n"] == 0 and out["recall@1"] is None and out["mrr"] is None


# --- answer metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decision"),
    [
        ("Yes, tailored interventions increased mammography use [1].", "yes"),
        ("**Yes.** It works.", "yes"),
        ("No, the drug did not lower mortality [2].", "no"),
        ("No evidence supports routine screening [1].", "no"),
        ("Aspirin does not reduce the risk in this group [1].", "no"),
        ("The benefit is unclear and further studies are needed [3].", "maybe"),
        ("There is insufficient evidence to recommend it [1].", "maybe"),
        ("Telephone counseling was effective in nonadherent women [1].", "maybe"),
        ("No longer than 48 hours is advised [1].", "maybe"),
        ("The correct answer is yes, metformin is preferred [1].", "yes"),
        ("Based on the sources, no. The rates did not differ [2].", "no"),
        ("In older adults, no matter the history, rates improved [1].", "maybe"),
        ("", "maybe"),
    ],
)
def test_parse_decision(text: str, decision: str) -> None:
    assert m.parse_decision(text) == decision


def test_decision_metrics_accuracy_and_confusion() -> None:
    gold = ["yes", "yes", "no", "maybe", "no"]
    pred = ["yes", "no", "no", "abstained", "maybe"]
    out = m.decision_metrics(gold, pred)
    assert out["n"] == 5
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["answered"] == 4
    assert out["accuracy_answered"] == pytest.approx(2 / 4)
    assert out["confusion"]["yes"] == {"yes": 1, "no": 1, "maybe": 0, "abstained": 0}
    assert out["confusion"]["no"] == {"yes": 0, "no": 1, "maybe": 1, "abstained": 0}
    assert out["confusion"]["maybe"]["abstained"] == 1
    with pytest.raises(ValueError):
        m.decision_metrics(["yes"], ["perhaps"])


def test_yes_no_accuracy_reads_the_recorded_decision_before_the_text() -> None:
    from evaluation.runner import system_metrics

    def record(qid: str, gold: str, text: str, decision: str | None) -> dict[str, Any]:
        answer = {"answer": text, "abstained": False, "mode": "quoted", "timings": {}}
        answer["decision"] = decision
        return {"qid": qid, "gold": [], "gold_answer": gold, "long_answer": None, "answer": answer}

    quote = "Mortality fell from 12% to 8% in the screened group [1]."  # parses as maybe
    assert m.parse_decision(quote) == "maybe"
    records = [
        record("1", "yes", quote, "yes"),
        record("2", "no", quote, "no"),
        record("3", "maybe", quote, "uncertain"),  # uncertain counts as maybe
        record("4", "yes", "Yes, it does [1].", None),  # no decision: the text is parsed
    ]
    decision = system_metrics(records, ["answer"], prefix="")["answer"]["decision"]
    assert decision["accuracy"] == 1.0
    assert [r["decisions"]["clinrag"] for r in records] == ["yes", "no", "maybe", "yes"]


def test_token_f1_hand_computed() -> None:
    # pred tokens: [cat, sat, on, mat] (article dropped); ref: [cat, sat] -> p 2/4, r 2/2
    assert m.token_f1("The cat sat on the mat.", "a cat sat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert m.token_f1("Metformin first [1].", "metformin first") == 1.0
    assert m.token_f1("abc", "xyz") == 0.0
    # repeated tokens are counted as a bag: pred [x, x, y], ref [x, y, y] -> common 2
    assert m.token_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_lcs_and_rouge_l_hand_computed() -> None:
    assert m.lcs_length(list("abcbdab"), list("bdcaba")) == 4
    # pred [police, killed, gunman], ref [police, kill, gunman] -> LCS 2, p = r = 2/3
    assert m.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    # order matters for ROUGE-L but not for token F1
    assert m.rouge_l("y x", "x y") == pytest.approx(0.5)
    assert m.token_f1("y x", "x y") == 1.0
    assert m.rouge_l("", "") == 1.0
    out = m.text_metrics(["x y", "c"], ["x y", "d"])
    assert out == {"n": 2, "token_f1": 0.5, "rouge_l": 0.5}


# --- citation, attribution and latency metrics ---------------------------------------------------


def test_citation_metrics_hand_computed() -> None:
    records = [
        # answerable, cites gold twice and one other document; 1 of 3 sentences unsupported
        {"gold": ["g1"], "abstained": False, "cited": ["g1", "g1", "x"], "sentences": 3,
         "unsupported": 1},
        # answerable, cites only a wrong document
        {"gold": ["g2"], "abstained": False, "cited": ["y"], "sentences": 1, "unsupported": 0},
        # answerable but abstained (a false abstention); its sentences are not counted
        {"gold": ["g3"], "abstained": True, "cited": [], "sentences": 5, "unsupported": 5},
        # unanswerable and abstained (right); unanswerable and answered with a citation (wrong)
        {"gold": [], "abstained": True, "cited": [], "sentences": 0, "unsupported": 0},
        {"gold": [], "abstained": False, "cited": ["z"], "sentences": 2, "unsupported": 0},
    ]  # fmt: skip
    out = m.citation_metrics(records)
    assert out["citations"] == 5
    assert out["precision"] == pytest.approx(2 / 5)
    assert out["recall"] == pytest.approx(1 / 3)
    assert out["unsupported_rate"] == pytest.approx(1 / 6)
    assert out["abstention_rate"] == 0.5
    assert out["false_abstention_rate"] == pytest.approx(1 / 3)


def test_citation_metrics_none_without_data() -> None:
    out = m.citation_metrics([{"gold": ["g"], "abstained": True, "cited": [], "sentences": 0,
                               "unsupported": 0}])  # fmt: skip
    assert out["precision"] is None and out["unsupported_rate"] is None
    assert out["abstention_rate"] is None and out["false_abstention_rate"] == 1.0


def test_attribution_metrics_hand_computed() -> None:
    rows: list[dict[str, Any]] = [
        {"surrogate": {"top_k_drop": 3.0, "random_drop": 1.0}, "loo": None},
        {"surrogate": {"top_k_drop": 1.0, "random_drop": 2.0},
         "loo": {"top_k_drop": 4.0, "random_drop": 0.0}},
    ]  # fmt: skip
    out = m.attribution_metrics(rows)
    assert out["surrogate"] == {
        "n": 2,
        "top_k_drop": 2.0,
        "random_drop": 1.5,
        "difference": 0.5,
        "win_rate": 0.5,
    }
    assert out["loo"]["n"] == 1 and out["loo"]["difference"] == 4.0


def test_percentile_and_latency_hand_computed() -> None:
    xs = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert m.percentile(xs, 50) == 3.0
    assert m.percentile(xs, 95) == pytest.approx(4.8)  # 4 + 0.8 * (5 - 4)
    assert m.percentile([1.0, 2.0], 50) == 1.5
    assert m.percentile([7.0], 95) == 7.0
    assert m.percentile([], 50) is None
    out = m.latency_metrics([{"retrieval": 1.0, "total": 2.0}, {"retrieval": 3.0}])
    assert out["retrieval"] == {"n": 2, "p50": 2.0, "p95": pytest.approx(2.9)}
    assert out["total"]["n"] == 1


# --- end to end on a tiny corpus -----------------------------------------------------------------

CORPUS = [
    ("HTN-1", "Hypertension in adults",
     "Stage 1 hypertension is a systolic blood pressure of 130 to 139 mm Hg or a diastolic "
     "blood pressure of 80 to 89 mm Hg. Lifestyle changes are recommended for all patients "
     "with elevated blood pressure."),
    ("DM:2", "Type 2 diabetes",
     "Metformin is the preferred initial medication for type 2 diabetes. For many nonpregnant "
     "adults an HbA1c goal below 7 percent is appropriate."),
    ("USPSTF/crc", "Colorectal cancer screening",
     "Screening for colorectal cancer is recommended for all adults aged 45 to 75 years. "
     "Colonoscopy every 10 years is one of the accepted screening strategies."),
    ("CDC:flu", "Influenza vaccination",
     "Annual influenza vaccination is recommended for everyone aged 6 months and older who has "
     "no contraindication."),
    # slugs to the same clinrag id as CDC:flu, so clinrag suffixes it; the map must undo that
    ("cdc-flu", "Influenza antiviral treatment",
     "Oseltamivir treatment should start as soon as possible, ideally within 48 hours of "
     "symptom onset, in patients with suspected influenza."),
    ("statin 7", "Statins for primary prevention",
     "Statin therapy is recommended for adults aged 40 to 75 years with an LDL cholesterol of "
     "190 mg/dL or higher."),
]  # fmt: skip
QUESTIONS = [
    ("q1", "What blood pressure defines stage 1 hypertension?", ["HTN-1"], None,
     "Stage 1 hypertension is a systolic pressure of 130 to 139 or a diastolic of 80 to 89."),
    ("q2", "Is metformin the preferred initial medication for type 2 diabetes?", ["DM:2"], "yes",
     "Metformin is the preferred initial medication for type 2 diabetes."),
    ("q3", "At what age should colorectal cancer screening start?", ["USPSTF/crc"], None,
     "Screening for colorectal cancer starts at age 45."),
    ("q4", "When should oseltamivir treatment for influenza start?", ["cdc-flu"], None,
     "Within 48 hours of symptom onset."),
    ("q5", "How should moderate acne vulgaris be treated in adolescents?", [], None, None),
    ("q6", "What dose of amoxicillin treats otitis media in toddlers?", [], None, None),
]  # fmt: skip


def write_fixture(folder: Path, qids: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id, title, text in CORPUS:
            row = {"doc_id": doc_id, "title": title, "text": text, "source": "test", "url": ""}
            fh.write(json.dumps(row) + "\n")
    with (folder / "questions.jsonl").open("w", encoding="utf-8") as fh:
        for qid, question, gold, answer, long_answer in QUESTIONS:
            if qids is None or qid in qids:
                row = {
                    "qid": qid,
                    "question": question,
                    "gold_doc_ids": gold,
                    "answer": answer,
                    "long_answer": long_answer,
                }
                fh.write(json.dumps(row) + "\n")
    return folder


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clinrag")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


def run_json(argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict:
    code = eval_command(parse([*argv, "--json", "--no-progress"]), settings)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_parser_defaults_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["data"])
    assert args.folder == Path("data")
    assert args.metrics == ("retrieval", "answer", "citations")
    assert args.limit is None and args.seed == 0 and args.baseline is None
    args = parse(["data", "--metrics", "retrieval, attribution", "--limit", "3"])
    assert args.metrics == ("retrieval", "attribution") and args.limit == 3
    with pytest.raises(SystemExit):
        parse(["data", "--limit", "0"])
    with pytest.raises(SystemExit):
        parse(["data", "--baseline", "llamaindex"])


def test_unknown_metric_is_a_usage_error(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_fixture(tmp_path / "data")
    assert eval_command(parse([str(folder), "--metrics", "bleu"]), settings) == 2
    assert "unknown metrics" in capsys.readouterr().err


def test_missing_folder_is_explained(tmp_path: Path, settings: Settings) -> None:
    from evaluation.data import EvalDataError

    with pytest.raises(EvalDataError, match="corpus.jsonl"):
        eval_command(parse([str(tmp_path / "nowhere")]), settings)


def test_eval_retrieval_end_to_end_then_resume_from_cache(
    tmp_path: Path,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from assistant.retrieve import Retriever
    from evaluation.data import Dataset, load_dataset

    folder = write_fixture(tmp_path / "data")
    argv = [str(folder), "--limit", "5", "--metrics", "retrieval"]
    first = run_json(argv, settings, capsys)
    assert first["questions"]["evaluated"] == 5
    assert first["metrics"] == ["retrieval"]
    r = first["clinrag"]["retrieval"]
    assert r["n"] == first["questions"]["answerable"] >= 3
    assert r["recall@10"] == 1.0  # six documents: every gold one is in the top 10
    assert r["recall@1"] >= 0.75 and r["mrr"] >= 0.75, r
    assert "answer" not in first["clinrag"]
    assert first["cache"]["computed"] == {"retrieval": 5}
    assert first["clinrag"]["latency"]["retrieval@30"]["p50"] > 0

    # the isolated store sits under HOME/eval/<corpus sha256[:16]>, not in the user's library
    dataset: Dataset = load_dataset(folder)
    root = settings.home / "eval" / dataset.corpus_sha256[:16]
    assert Path(first["corpus"]["store"]).parent == root
    assert not settings.manifest_path.exists()
    doc_map = json.loads((Path(first["corpus"]["store"]) / "doc_map.json").read_text())
    assert sorted(doc_map.values()) == sorted(d for d, _, _ in CORPUS)  # ids survive slugging

    # second run: nothing may be retrieved again
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("retrieval ran although its result was cached")

    monkeypatch.setattr(Retriever, "retrieve", boom)
    second = run_json(argv, settings, capsys)
    assert second["cache"]["computed"] == {}
    assert second["cache"]["reused"] == {"retrieval": 5}
    assert second["cache"]["fully_cached"] is True
    assert second["clinrag"]["retrieval"] == first["clinrag"]["retrieval"]


def test_interrupted_run_resumes_where_it_stopped(
    tmp_path: Path,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from assistant.retrieve import Retriever

    folder = write_fixture(tmp_path / "data")
    real = Retriever.retrieve
    calls = {"n": 0}

    def flaky(self: Retriever, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Retriever, "retrieve", flaky)
    argv = [str(folder), "--metrics", "retrieval", "--no-progress"]
    assert eval_command(parse(argv), settings) == 130
    assert "resume" in capsys.readouterr().err
    summary = run_json(argv[:-1], settings, capsys)
    assert summary["cache"]["reused"] == {"retrieval": 2}
    assert summary["cache"]["computed"] == {"retrieval": 4}
    assert summary["questions"]["evaluated"] == 6


def test_shards_split_the_sample_and_the_whole_run_reuses_them(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_fixture(tmp_path / "data")
    argv = [str(folder), "--limit", "5", "--metrics", "retrieval"]
    one = run_json([*argv, "--shard", "1/2"], settings, capsys)
    two = run_json([*argv, "--shard", "2/2"], settings, capsys)
    assert one["shard"] == "1/2" and two["shard"] == "2/2"
    # positions 0, 2, 4 and 1, 3 of the seeded sample of five
    assert one["questions"]["evaluated"] == 3 and two["questions"]["evaluated"] == 2
    assert one["cache"]["computed"] == {"retrieval": 3}
    assert two["cache"]["computed"] == {"retrieval": 2}
    assert any("Shard 1 of 2" in note for note in one["notes"])
    whole = run_json(argv, settings, capsys)
    assert whole["shard"] is None
    assert whole["cache"]["computed"] == {} and whole["cache"]["reused"] == {"retrieval": 5}
    unsharded = run_json([*argv, "--fresh"], settings, capsys)
    assert whole["clinrag"]["retrieval"] == unsharded["clinrag"]["retrieval"]


def test_answer_cache_key_follows_answer_settings_and_template(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import assistant.prompts
    from evaluation.data import Dataset
    from evaluation.runner import config_hashes

    data = Dataset(tmp_path, [], [], "ab" * 32)
    base = config_hashes(settings, data, ())
    moved = config_hashes(settings.model_copy(update={"home": tmp_path / "x"}), data, ())
    assert moved == base  # where the home lies cannot change an answer
    deeper = config_hashes(settings.model_copy(update={"top_k": settings.top_k + 1}), data, ())
    assert deeper["answer"] != base["answer"] and deeper["retrieval"] == base["retrieval"]

    # settings that cannot change an answer leave its key alone; the fusion weights decide both
    limits = config_hashes(settings.model_copy(update={"max_file_mb": 1}), data, ())
    assert limits == base
    weighted = config_hashes(settings.model_copy(update={"lexical_weight": 0.9}), data, ())
    assert weighted["retrieval"] != base["retrieval"] and weighted["answer"] != base["answer"]

    real = assistant.prompts.load_template(settings.prompt_template)
    edited = assistant.prompts.PromptTemplate(real.name, real.system + " Be brief.", real.user, "0")
    monkeypatch.setattr(assistant.prompts, "load_template", lambda name: edited)
    assert config_hashes(settings, data, ())["answer"] != base["answer"]


@pytest.mark.parametrize("bad", ["0/2", "3/2", "2", "a/b"])
def test_bad_shard_is_a_usage_error(bad: str) -> None:
    with pytest.raises(SystemExit):
        parse(["data", "--shard", bad])


def _append_rows(path: str, writer: int, rows: int) -> None:
    from evaluation.data import Question
    from evaluation.runner import ResultsCache

    cache = ResultsCache(Path(path))
    for i in range(rows):
        q = Question(qid=f"w{writer}-{i}", question="q", gold=(), answer=None, long_answer=None)
        cache.put("answer", "cfg", q, {"answer": str(writer) * 50_000})


def test_results_cache_lines_from_concurrent_processes_never_interleave(tmp_path: Path) -> None:
    import multiprocessing

    from evaluation.runner import ResultsCache

    path = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_rows, args=(str(path), w, 40)) for w in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80
    rows = [json.loads(line) for line in lines]  # a torn or interleaved line would not parse
    assert {r["data"]["answer"] for r in rows} == {"1" * 50_000, "2" * 50_000}
    assert len(ResultsCache(path)._rows) == 80


def test_a_torn_line_of_digits_is_skipped_on_reading(tmp_path: Path) -> None:
    """A line cut inside a long answer can be all digits: too long for an int, which json
    refuses with a ValueError that is not a JSONDecodeError."""
    from evaluation.runner import ResultsCache

    path = tmp_path / "results.jsonl"
    good = {"part": "answer", "config": "c", "qid": "1", "question": "q", "data": {}}
    path.write_text(json.dumps(good) + "\n" + "1" * 5_000 + "\n", encoding="utf-8")
    assert list(ResultsCache(path)._rows) == [("answer", "c", "1")]


def test_report_writes_markdown_and_png(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    folder = write_fixture(tmp_path / "data")
    out = tmp_path / "report"
    summary = run_json(
        [str(folder), "--metrics", "retrieval", "--report", str(out)], settings, capsys
    )
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Retrieval" in text and "recall@5" in text and "retrieval.png" in text
    png = out / "retrieval.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "latency.png").is_file()
    rows = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    assert {r["qid"] for r in rows} == {q[0] for q in QUESTIONS}
    corpus_ids = {d for d, _, _ in CORPUS}
    assert all(set(r["retrieval"]["doc_ids"]) <= corpus_ids for r in rows)
    assert str(out / "report.md") in summary["report"]


def test_langchain_baseline_retrieval_side_by_side(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("langchain_chroma")
    pytest.importorskip("langchain_huggingface")
    folder = write_fixture(tmp_path / "data")
    summary = run_json(
        [str(folder), "--metrics", "retrieval", "--baseline", "langchain"], settings, capsys
    )
    base = summary["baseline"]
    assert base["name"] == "langchain"
    assert base["retrieval"]["n"] == summary["clinrag"]["retrieval"]["n"] == 4
    assert base["retrieval"]["recall@10"] == 1.0
    assert summary["cache"]["computed"] == {"retrieval": 6, "baseline_retrieval": 6}


@pytest.mark.slow
def test_answer_metrics_with_the_real_model(
    tmp_path: Path, settings: Settings, library: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # share the session's converted model (the GGUF conversion takes ~40 s on 2 cores)
    settings.home.mkdir(parents=True, exist_ok=True)
    library.models_dir.mkdir(parents=True, exist_ok=True)
    settings.models_dir.symlink_to(library.models_dir, target_is_directory=True)
    folder = write_fixture(tmp_path / "data", qids=["q2", "q4", "q5"])
    argv = [str(folder), "--metrics", "retrieval,answer,citations"]
    summary = run_json(argv, settings, capsys)
    c = summary["clinrag"]
    assert summary["cache"]["computed"] == {"retrieval": 3, "answer": 3}
    decision = c["answer"]["decision"]
    assert decision["n"] == 1  # only q2 has a yes/no/maybe gold answer
    assert sum(decision["confusion"]["yes"].values()) == 1
    cit = c["citations"]
    assert cit["answerable"] == 2 and cit["unanswerable"] == 1
    assert cit["abstention_rate"] == 1.0  # acne is not in the library
    for key in ("precision", "recall", "unsupported_rate", "false_abstention_rate"):
        assert key in cit
    assert sum(c["modes"].values()) == 3 and c["modes"]["abstained"] >= 1
    assert {"retrieval", "total"} <= set(c["latency"])
    if c["modes"].get("abstained", 0) < 3:
        # 0 s where no draft was needed (a yes/no decision, quotes on strong evidence)
        assert "generation" in c["latency"]
        assert c["latency"]["generation"]["p95"] >= c["latency"]["generation"]["p50"] >= 0
        assert c["latency"]["total"]["p50"] > 0
    # the rerun answers from the cache: no model call
    again = run_json(argv, settings, capsys)
    assert again["cache"]["computed"] == {}
    assert again["clinrag"]["citations"] == cit


def test_write_library_names_files_safely_and_maps_them_back(tmp_path: Path) -> None:
    from evaluation.data import markdown_file, shared_doc_ids, write_library

    rows = [{"doc_id": d, "title": t, "text": x} for d, t, x in CORPUS]
    rows.append({"doc_id": "CDC:flu", "title": "Influenza again", "text": "A second row."})
    paths = write_library(rows, tmp_path / "lib")
    names = sorted(Path(p).name for p in paths)
    # "CDC:flu" twice and "cdc-flu" give three files; case never tells two files apart
    assert len(names) == len({n.lower() for n in names}) == len(rows)
    assert sorted(paths.values()) == sorted(str(r["doc_id"]) for r in rows)
    first = next(p for p, d in paths.items() if d == "HTN-1")
    assert Path(first).read_text(encoding="utf-8") == markdown_file(rows[0])
    # another rendering of the same rows, as the benchmarks write them
    plain = write_library(rows, tmp_path / "plain", render=lambda r: r["text"])
    assert Path(next(iter(plain))).read_text(encoding="utf-8") == rows[0]["text"]
    assert shared_doc_ids(rows) == {"CDC:flu": 2}


def test_repeated_qids_are_kept_and_numbered(tmp_path: Path) -> None:
    """MedQuAD numbers each source separately, so its qids repeat; every question still counts."""
    from evaluation.data import load_dataset
    from evaluation.runner import data_notes

    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"doc_id": d, "title": d, "text": f"Text of {d}."}) for d in "abc")
    )
    rows = [("0001", "What is a?", "a"), ("0001", "What is b?", "b"), ("0002", "c?", "c")]
    rows.append(("0001", "And a again?", "a"))
    (folder / "questions.jsonl").write_text(
        "\n".join(json.dumps({"qid": q, "question": t, "gold_doc_ids": [g]}) for q, t, g in rows)
    )
    dataset = load_dataset(folder)
    assert [q.qid for q in dataset.questions] == ["0001", "0001#2", "0002", "0001#3"]
    assert [q.source_qid for q in dataset.questions] == ["0001", "0001", "0002", "0001"]
    assert [q.gold for q in dataset.questions] == [("a",), ("b",), ("c",), ("a",)]
    assert load_dataset(folder).questions == dataset.questions  # stable across loads
    notes = data_notes(dataset, dataset.questions)
    assert any("2 questions repeat an earlier qid" in n for n in notes), notes


def test_hold_out_leaves_the_topic_out_and_makes_its_questions_unanswerable(
    tmp_path: Path,
) -> None:
    from evaluation.data import Dataset, EvalDataError, Question, hold_out

    corpus = [
        {"doc_id": "a1", "title": "Choroideremia", "text": "What it is."},
        {"doc_id": "a2", "title": " choroideremia ", "text": "How it is inherited."},
        {"doc_id": "b1", "title": "Asthma", "text": "Step therapy."},
        {"doc_id": "c1", "title": "", "text": "Untitled."},
    ]
    questions = [
        Question("q1", "What is choroideremia?", ("a1",)),
        Question("q2", "How is choroideremia inherited?", ("a2",)),
        Question("q3", "What is step 3 asthma therapy?", ("b1",)),
        Question("q4", "Not covered at all?", ()),
    ]
    dataset = Dataset(tmp_path, corpus, questions, "f" * 64)
    # seeded: hold out whichever question the seed picks, here both choroideremia questions
    # fall together because their passages share a title (case and spaces aside)
    held, sample = hold_out(dataset, [questions[0], questions[2], questions[3]], 1, seed=3)
    chosen = "q1" if held.held_out == 2 else "q3"
    if chosen == "q1":
        assert [r["doc_id"] for r in held.corpus] == ["b1", "c1"]
        assert [q.answerable for q in held.questions] == [False, False, True, False]
        assert [q.answerable for q in sample] == [False, True, False]
    else:
        assert [r["doc_id"] for r in held.corpus] == ["a1", "a2", "c1"]
        assert [q.answerable for q in sample] == [True, False, False]
    assert held.corpus_sha256 != dataset.corpus_sha256
    again, _ = hold_out(dataset, [questions[0], questions[2], questions[3]], 1, seed=3)
    assert again.corpus_sha256 == held.corpus_sha256 and again.held_out == held.held_out
    with pytest.raises(EvalDataError, match="between 1 and the 2 answerable"):
        hold_out(dataset, [questions[0], questions[2], questions[3]], 3)


def test_eval_unanswerable_holds_out_topics_in_a_store_of_its_own(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_fixture(tmp_path / "data")
    plain = run_json([str(folder), "--metrics", "retrieval"], settings, capsys)
    held = run_json(
        [str(folder), "--metrics", "retrieval", "--unanswerable", "2"], settings, capsys
    )
    assert plain["corpus"]["held_out_documents"] == 0
    assert held["corpus"]["held_out_documents"] == 2
    assert held["corpus"]["documents"] == plain["corpus"]["documents"] - 2
    assert held["questions"]["unanswerable"] == plain["questions"]["unanswerable"] + 2
    assert held["clinrag"]["retrieval"]["n"] == plain["clinrag"]["retrieval"]["n"] - 2
    assert held["corpus"]["store"] != plain["corpus"]["store"]
    assert any("--unanswerable 2" in note for note in held["notes"])
    from evaluation.report import render_markdown

    assert "2 held out by --unanswerable" in render_markdown(held)
    assert "held out" not in render_markdown(plain)
    from evaluation.data import EvalDataError

    with pytest.raises(EvalDataError, match="between 1 and the 4 answerable"):
        eval_command(parse([str(folder), "--unanswerable", "9"]), settings)
