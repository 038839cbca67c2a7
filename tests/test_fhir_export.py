"""The FHIR export carries an AI Provenance per answer with its attribution per sentence, and
`clinrag audit show` prints that attribution, or why there is none (issue 15, item 3).

Real library, embedder and audit log; the LLM is the extractive stand-in from
``test_ui_fakes`` and the attribution its stand-in (the link, not the scores, is under test).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from audit.log.fhir import AI_DEVICE, AI_INPUT_PROMPT, AI_PROVENANCE, EXT_ATTRIBUTION
from audit.record import open_log
from core.config import Settings, load_settings
from core.types import Actor
from services import ask as asking
from services import audit
from tests.test_ui_fakes import ExtractiveLLM, attributing_assistant
from ui.cli.main import main

HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
OFF_TOPIC = "How do I replace the chain on a mountain bike?"
CLINICIAN = Actor("carol", "clinician")
OTHER = Actor("dave", "clinician")
AUDITOR = Actor("audrey", "auditor")
FAITH = {"k": 1, "top_k_drop": 1.2, "random_drop": 0.1, "flag_memory": False}


@pytest.fixture(scope="module")
def logged(accounts_library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One home with an answer of each kind: attributed (by carol), pending (by dave), failed
    (the model gives no log-probabilities) and an abstention."""
    from assistant.pipeline import Assistant

    home = tmp_path_factory.mktemp("fhir") / "home"
    shutil.copytree(accounts_library, home)
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    helper = attributing_assistant(settings, FAITH)
    attributed = asking.ask(helper, CLINICIAN, HTN_QUESTION)
    assert asking.attribute(helper, CLINICIAN, attributed) is not None
    pending = asking.ask(helper, OTHER, HTN_QUESTION)
    plain = Assistant(settings, llm=ExtractiveLLM())
    failed = asking.ask(plain, CLINICIAN, HTN_QUESTION)
    assert asking.attribute(plain, CLINICIAN, failed) is None
    abstained = asking.ask(helper, CLINICIAN, OFF_TOPIC)
    assert abstained.abstained
    return {
        "home": home,
        "settings": settings,
        "attributed": attributed.audit_id,
        "pending": pending.audit_id,
        "failed": failed.audit_id,
        "abstained": abstained.audit_id,
    }


def _records(settings: Settings, event: str) -> list[Any]:
    with open_log(settings) as log:
        return log.list(event=event)


def _no_nan(token: str) -> float:
    raise AssertionError(f"not valid JSON: {token}")


def _extensions(element: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in element.get("extension", []) if e["url"] == url]


def _value(element: dict[str, Any], url: str) -> Any:
    [ext] = _extensions(element, url)
    [value] = [v for k, v in ext.items() if k.startswith("value")]
    return value


def test_every_answer_exports_as_an_ai_provenance_with_its_attribution_per_sentence(
    logged: dict[str, Any],
) -> None:
    settings = logged["settings"]
    exported = audit.export(settings, AUDITOR, "fhir", audit.Query(), destination="test")
    bundle = json.loads(exported.data, parse_constant=_no_nan)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    assert len(by_url) == len(bundle["entry"])  # fullUrls are unique
    assert all("resourceType" in r and r.get("id") for r in by_url.values())

    answers = {r.seq: r for r in _records(settings, "answer")}
    provenances = [r for r in by_url.values() if r["resourceType"] == "Provenance"]
    assert len(provenances) == len(answers) == 4
    states: dict[int, dict[str, Any]] = {}
    for provenance in provenances:
        assert provenance["meta"]["profile"] == [AI_PROVENANCE]
        assert provenance["reason"][0]["coding"][0]["code"] == "AIAST"
        # the target is the answer, exported as its own resource
        [target] = provenance["target"]
        document = by_url[target["reference"]]
        assert document["resourceType"] == "DocumentReference"
        seq = int(document["identifier"][0]["value"])
        record = answers[seq]
        text = base64.b64decode(document["content"][0]["attachment"]["data"]).decode()
        assert text == record.payload["answer"]
        # agents: the model as an AI Device, and the asker by user id
        devices = [
            by_url[a["who"]["reference"]] for a in provenance["agent"] if "reference" in a["who"]
        ]
        model = record.payload["model"]
        if model is not None:  # an abstention before generation used no language model
            llm = next(d for d in devices if d["deviceName"][0]["name"] == model["model_id"])
            assert llm["meta"]["profile"] == [AI_DEVICE]
            weights = {"system": "urn:clinrag:model-weights-sha256", "value": model["weights_hash"]}
            assert weights in llm["identifier"]
        embedder = record.payload["embedder"]["model"]
        assert any(d["deviceName"][0]["name"] == embedder for d in devices)
        humans = [a["who"] for a in provenance["agent"] if a["who"].get("type") == "Practitioner"]
        assert [h["identifier"]["value"] for h in humans] == [record.user]
        # inputs: the question (with the prompt version) and every retrieved passage
        assert all(e["role"] == "source" for e in provenance["entity"])
        [prompt] = provenance["contained"]
        assert prompt["meta"]["profile"] == [AI_INPUT_PROMPT]
        asked = base64.b64decode(prompt["content"][0]["attachment"]["data"]).decode()
        assert asked == record.payload["question"]
        if record.payload["prompt"] is not None:
            version = {
                "system": "urn:clinrag:prompt-sha256",
                "value": record.payload["prompt"]["hash"],
            }
            assert version in prompt["identifier"]
        passages = [e for e in provenance["entity"] if e["what"].get("type")]
        assert [p["what"]["identifier"]["value"] for p in passages] == [
            r["doc_id"] for r in record.payload["retrieved"]
        ]
        assert all(
            _value(
                _extensions(p, "urn:clinrag:fhir:extension:retrieved-passage")[0], "indexVersion"
            )
            == record.payload["index_version"]
            for p in passages
        )
        [attribution] = _extensions(provenance, EXT_ATTRIBUTION)
        states[seq] = attribution

    # attributed: one entry per answer sentence, its source sentences with their scores
    attributed = states[logged["attributed"]]
    assert _value(attributed, "status") == "attributed"
    [linked] = [
        r
        for r in _records(settings, "attribution")
        if r.payload["answer_id"] == logged["attributed"]
    ]
    assert _value(attributed, "auditRecord") == linked.seq
    matrix = linked.payload["attribution"]["per_sentence"]
    sentences = _extensions(attributed, "sentence")
    assert len(sentences) == len(matrix) >= 1
    for sentence, row in zip(sentences, matrix, strict=True):
        scores = [_value(s, "score") for s in _extensions(sentence, "source")]
        assert scores == sorted(row, reverse=True)
        assert _value(sentence, "text") == linked.payload["sentences"][0]["text"]
    assert "3.3x less likely" in _value(attributed, "faithfulness")  # e**1.2
    # pending: exported without attribution, and says so
    pending = states[logged["pending"]]
    assert _value(pending, "status") == "pending"
    assert not _extensions(pending, "sentence")
    assert "pending" in _value(pending, "note")
    failed = states[logged["failed"]]
    assert _value(failed, "status") == "failed" and not _extensions(failed, "sentence")
    assert "log-probabilities" in _value(failed, "note")
    assert _value(states[logged["abstained"]], "status") == "not-applicable"


def test_audit_show_prints_the_attribution_or_why_there_is_none(
    logged: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINRAG_HOME", str(logged["home"]))
    assert main(["audit", "show", str(logged["attributed"])]) == 0
    out = capsys.readouterr().out
    section = out[out.index("ATTRIBUTION: attributed (surrogate, audit record") :]
    assert "answer sentence 1:" in section and "+0.900  [source" in section
    assert "faithfulness: Removing" in section
    assert main(["audit", "show", str(logged["pending"])]) == 0
    assert "ATTRIBUTION: pending" in capsys.readouterr().out
    assert main(["audit", "show", str(logged["failed"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["seq"] == logged["failed"]
    assert shown["attribution_status"]["status"] == "failed"
    assert "log-probabilities" in shown["attribution_status"]["reason"]
