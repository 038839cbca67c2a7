"""The app in a real browser: ``streamlit run ui/app.py`` driven by headless Chromium (Selenium).

A clinician signs in, asks a question of the packaged model, sees the answer with its source
and opens it; an auditor signs in, finds that answer's record and verifies the chain.
Screenshots are test artifacts: they go to ``test-artifacts/<test name>/`` in the repository
(ignored by git; ``CLINRAG_TEST_ARTIFACTS`` moves them), replaced on each run.

Needs Chromium and its driver (Debian: ``apt-get install -y chromium chromium-driver``) and
``pip install selenium``. Skipped only when no Chromium binary is found.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_ui_fakes import PASSWORDS, REPO, SAMPLES, build_library

HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1100",
)
CRC_QUESTION = "At what age should average-risk adults start colorectal cancer screening?"
CRC_FOLLOW_UP = "and when should they stop?"
START_TIMEOUT_S = 90
ANSWER_TIMEOUT_S = 420  # the first question loads the packaged model on a loaded machine


def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where a test's screenshots are kept after it ends: CI uploads or a reviewer opens them."""
    root = Path(os.environ.get("CLINRAG_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder = root / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def _chromium() -> str | None:
    env = os.environ.get("CLINRAG_TEST_CHROMIUM")
    if env and Path(env).is_file():
        return env
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited early:\n{log.read_text()[-4000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"streamlit did not start in {timeout}s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def serve_app(tmp_path: Path, home: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """``streamlit run ui/app.py`` over ``home`` on a free local port; yields its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINRAG_")} | {
        "CLINRAG_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "TOKENIZERS_PARALLELISM": "false",
        **(extra_env or {}),
    }
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "ui/app.py",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--server.fileWatcherType",
                "none",
                "--browser.gatherUsageStats",
                "false",
                "--client.toolbarMode",
                "viewer",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/_stcore/health", START_TIMEOUT_S, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def server(
    browser: Any, tmp_path: Path, models_cache: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Path]]:
    """A pre-ingested home with accounts, and the app serving it on a free local port.

    The home reads the session's converted model, so the first question loads it rather than
    converting it again. Asked for only once ``browser`` exists: without Chromium the test is
    skipped before the model is prepared."""
    from tests.conftest import share_models

    request.getfixturevalue("packaged_llm")  # the conversion is done before the app starts
    home = build_library(share_models(tmp_path / "home", models_cache))
    with serve_app(tmp_path, home) as url:
        yield url, home


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    assert Path(driver_path).is_file(), (
        "Chromium is installed but chromedriver is not: apt-get install -y chromium-driver"
    )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch drivers
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # the network log lets a test list every URL the page asked for
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """Small helpers over Selenium for Streamlit's DOM."""

    def __init__(self, driver: Any, shots: Path) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.by = By
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = check()
                if value:
                    return value
            except Exception as exc:  # element not there yet, stale after a rerun, ...
                last = exc
            time.sleep(0.3)
        self.shot(f"timeout-{what.replace(' ', '-')}")
        raise AssertionError(f"timed out waiting for {what} ({last}):\n{self.text()[-3000:]}")

    def text(self) -> str:
        return str(self.driver.find_element(self.by.TAG_NAME, "body").text)

    def read(self, what: str, look: Callable[[], Any], timeout: float = 30) -> Any:
        """``look()``'s value, read again when a rerun replaced an element mid-read (a stale
        element): unlike ``wait``, an empty or false value is a valid answer."""
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + timeout
        while True:
            try:
                return look()
            except StaleElementReferenceException:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the page kept redrawing while reading {what}") from None
                time.sleep(0.3)

    def wait_text(self, needle: str, timeout: float = 60) -> None:
        self.wait(f"text {needle!r}", lambda: needle in self.text(), timeout)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{len(list(self.shots.iterdir())):02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def click(self, element: Any) -> None:
        """Click ``element`` as a user would, after scrolling it clear of the chat input bar
        that Streamlit pins over the page's bottom (a plain click there lands on the bar)."""
        from selenium.common.exceptions import ElementClickInterceptedException

        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        try:
            element.click()
        except ElementClickInterceptedException:
            time.sleep(0.5)  # a rerun was still moving the layout
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            element.click()

    def css(self, selector: str) -> list[Any]:
        return list(self.driver.find_elements(self.by.CSS_SELECTOR, selector))

    def button(self, label: str, timeout: float = 30) -> Any:
        def find() -> Any:
            for b in self.css("button"):
                # an icon's ligature name comes first in the text ("download\nOriginal file")
                lines = b.text.strip().splitlines()
                if b.is_displayed() and b.is_enabled() and lines and lines[-1] == label:
                    return b
            return None

        return self.wait(f"button {label!r}", find, timeout)

    def settled(self, seconds: float = 1.5, timeout: float = 60) -> None:
        """Wait until the panels stop moving (their titles and places): a click made while a
        rerun is still redrawing lands on whatever moved under the pointer (a neighbouring
        panel). The attribution's progress text below them may still tick."""
        last = {"text": "", "since": time.monotonic()}

        def still() -> bool:
            text = repr(
                [
                    (e.text, e.location["y"], e.get_attribute("open"))
                    for e in self.css('[data-testid="stExpander"] details')
                ]
            )
            now = time.monotonic()
            if text != last["text"]:
                last.update(text=text, since=now)
                return False
            return now - float(last["since"]) >= seconds

        self.wait("the page to settle", still, timeout)

    def panel(self, label: str) -> Any:
        """The source panel (an expander's ``details`` element) whose title starts with
        ``label`` as the reader sees it, once the page has settled."""
        self.settled()

        def find() -> Any:
            for details in self.css('[data-testid="stExpander"] details'):
                summary = details.find_element(self.by.TAG_NAME, "summary")
                # (the summary's text starts with the arrow icon's ligature name)
                if any(line.startswith(f"{label} ") for line in summary.text.splitlines()):
                    return details
            return None

        return self.wait(f"source panel {label}", find)

    def marks(self, label: str) -> list[str]:
        """The highlighted evidence shown inside the source panel ``label``."""
        found = self.panel(label).find_elements(self.by.CSS_SELECTOR, "mark.clinrag-evidence")
        return [m.text for m in found if m.is_displayed()]

    def sign_in(self, username: str) -> None:
        def fill() -> bool:
            # After a sign-out the rerun may still replace the form (seen on a loaded machine:
            # a stale element), so find, fill and check the fields again until they hold.
            user = self.css('input[aria-label="User name"]')[0]
            password = self.css('input[aria-label="Password"]')[0]
            for field, value in ((user, username), (password, PASSWORDS[username])):
                field.clear()
                field.send_keys(value)
            return bool(
                user.get_attribute("value") == username
                and password.get_attribute("value") == PASSWORDS[username]
            )

        self.wait("sign-in form", fill)
        self.click(self.button("Sign in"))
        self.wait_text(f"Signed in as {username}")

    def select(self, label: str, option: str) -> None:
        from selenium.webdriver.common.keys import Keys

        def box() -> Any:
            for widget in self.css('[data-testid="stSelectbox"]'):
                if widget.text.split("\n", 1)[0].strip() == label:
                    return widget
            return None

        field = self.wait(f"selectbox {label!r}", box).find_element(self.by.TAG_NAME, "input")
        self.click(field)
        field.send_keys(option)
        field.send_keys(Keys.ENTER)


@pytest.mark.slow
def test_clinician_asks_and_auditor_verifies_in_a_real_browser(
    server: tuple[str, Path], browser: Any, request: pytest.FixtureRequest
) -> None:
    from selenium.webdriver.common.keys import Keys

    from audit.record import open_log as audit_log
    from core.config import load_settings

    url, home = server
    page = Page(browser, artifacts(request))
    browser.get(url)
    page.wait_text("Sign in with your hospital account")
    page.shot("signin")

    # --- the clinician
    page.sign_in("carol")
    assert "Audit" not in [e.text for e in page.css('[data-testid="stSidebar"] label')]
    box = page.wait("chat input", lambda: page.css('[data-testid="stChatInputTextArea"]'))[0]
    box.send_keys(HTN_QUESTION)
    box.send_keys(Keys.ENTER)
    page.wait_text("Audit record", timeout=ANSWER_TIMEOUT_S)
    page.shot("answer")

    log = audit_log(load_settings(env={"CLINRAG_HOME": str(home)}))
    answer = log.list(event="answer")[-1]
    assert answer.user == "carol" and answer.payload["question"] == HTN_QUESTION
    body = page.text()
    assert f"Audit record {answer.seq}" in body
    if answer.payload["abstained"]:
        pytest.fail(f"the packaged model abstained on {HTN_QUESTION!r}: {answer.payload}")
    cited = {c["n"] for c in answer.payload["citations"]}
    assert cited, answer.payload
    badges = [b.text.strip() for b in page.css('[data-testid="stMarkdownContainer"] span')]
    assert any(b in {str(n) for n in cited} for b in badges), badges

    # open the source the reader sees as [1]: its chunk, escaped, with its evidence highlighted
    first = page.panel("[1]")
    assert "High Blood Pressure in Adults" in first.text
    page.click(first.find_element(page.by.TAG_NAME, "summary"))
    marks = page.wait("highlighted evidence in [1]", lambda: page.marks("[1]"))
    assert any("Stage 1 hypertension" in m for m in marks), marks
    page.wait_text("Issued by: American College of Cardiology")
    assert page.button("Original file")
    page.shot("citation-open")

    # the background attribution redraws the page (its "what drove" panels come above the
    # sources): the panel the clinician opened stays open, with its highlights
    page.wait(
        "attribution record",
        lambda: [
            r for r in log.list(event="attribution") if r.payload.get("answer_id") == answer.seq
        ],
        timeout=ANSWER_TIMEOUT_S,
    )
    page.wait_text("Which sources the answer relied on", timeout=60)
    assert page.panel("[1]").get_attribute("open") is not None, (
        "source panel [1] closed when the attribution came"
    )
    marks = page.wait("evidence in [1] after the attribution", lambda: page.marks("[1]"))
    assert any("Stage 1 hypertension" in m for m in marks), marks
    page.shot("citation-open-after-attribution")

    page.click(page.button("Sign out"))
    page.wait_text("Sign in with your hospital account")

    # --- the auditor
    page.sign_in("audrey")
    page.wait_text("Verify the chain")
    assert "Ask a clinical question" not in page.text()
    page.select("Event", "answer")
    page.wait_text(f"Record {answer.seq}: answer")
    page.wait_text(HTN_QUESTION)
    page.shot("audit-record")
    page.click(page.button("Verify the chain"))
    page.wait_text("Chain verified")
    page.shot("audit-verified")
    verify = log.list(event="verify")[-1]
    assert verify.user == "audrey" and verify.payload["ok"] is True

    # --- the administrator adds a guideline through the upload form
    page.click(page.button("Sign out"))
    page.wait_text("Sign in with your hospital account")
    page.sign_in("admin")
    radio = page.wait(
        "Library in the menu",
        lambda: [e for e in page.css('[data-testid="stSidebar"] label') if e.text == "Library"],
    )
    page.click(radio[0])
    page.wait_text("Add documents")
    upload = page.wait("file input", lambda: page.css('input[type="file"]'))[0]
    upload.send_keys(str(SAMPLES / "depression-screening-adults.txt"))
    page.wait_text("adults.txt")  # the chip shows a shortened name
    page.click(page.button("Add to library"))
    page.wait_text("Added 1, updated 0", timeout=120)
    page.wait_text("4 documents,")  # the table was refreshed
    page.shot("library-upload")
    ingest = log.list(event="ingest")[-1]
    assert ingest.user == "admin" and ingest.payload["added"] == 1
    assert (home / "uploads" / "depression-screening-adults.txt").is_file()
    log.close()
    print(f"\nscreenshots: {page.shots}")


@pytest.mark.slow
def test_conversation_attribution_and_replay_in_a_real_browser(
    browser: Any, tmp_path: Path, models_cache: Path, request: pytest.FixtureRequest
) -> None:
    """The clinician's whole path (ask, a follow-up, a source, the attribution with its
    faithfulness in words) and the auditor's (the answer record, faithfulness, the replay),
    through the packaged model, with a screenshot at every step."""
    from selenium.webdriver.common.keys import Keys

    from audit.record import open_log as audit_log
    from core.config import load_settings
    from tests.conftest import share_models

    request.getfixturevalue("packaged_llm")
    home = build_library(share_models(tmp_path / "home", models_cache))
    # fewer ablations than the default keep the browser wait short; the method is the same
    env = {"CLINRAG_ATTRIBUTION_ABLATIONS": "8"}
    page = Page(browser, artifacts(request))
    log = audit_log(load_settings(env={"CLINRAG_HOME": str(home)}))

    def ask(question: str, turn: int) -> Any:
        box = page.wait("chat input", lambda: page.css('[data-testid="stChatInputTextArea"]'))[0]
        box.send_keys(question)
        box.send_keys(Keys.ENTER)
        page.wait(
            f"answer {turn}",
            lambda: len(log.list(event="answer")) >= turn and "Audit record" in page.text(),
            timeout=ANSWER_TIMEOUT_S,
        )
        record = log.list(event="answer")[-1]
        page.wait_text(f"Audit record {record.seq}")
        return record

    with serve_app(tmp_path, home, env) as url:
        browser.get(url)
        page.sign_in("carol")

        # --- the question: the recommendation leads, cited with label 1
        first = ask(CRC_QUESTION, 1)
        assert not first.payload["abstained"], first.payload
        lead = first.payload["sentences"][0]
        assert "45" in lead["text"], first.payload["answer"]
        assert all(s["supported"] for s in first.payload["sentences"])
        labels = sorted(c["label"] for c in first.payload["citations"])
        assert labels == list(range(1, len(labels) + 1)), first.payload["citations"]
        assert lead["text"].split(":")[0] in page.text()
        page.shot("answer")

        # --- a follow-up, read in the conversation's context
        second = ask(CRC_FOLLOW_UP, 2)
        resolved = second.payload["resolved_question"]
        assert resolved and "colorectal" in resolved.lower(), second.payload
        assert second.payload["parent_id"] == first.seq
        page.wait_text("Understood as: " + resolved)
        assert second.payload["question"] == CRC_FOLLOW_UP
        assert {r["doc_id"] for r in second.payload["retrieved"][:1]} == {
            "colorectal-cancer-screening"
        }
        page.shot("follow-up")

        # --- a source of the follow-up, opened: its evidence highlighted
        page.settled()
        panel = page.wait(
            "a colorectal source panel",
            lambda: next(
                (
                    e
                    for e in reversed(page.css('[data-testid="stExpander"] summary'))
                    if "Colorectal" in e.text
                ),
                None,
            ),
        )
        page.click(panel)
        page.wait(
            "highlighted evidence",
            lambda: [m for m in page.css("mark.clinrag-evidence") if m.is_displayed()],
        )
        page.shot("source-open")

        # --- the attribution of the follow-up appears by itself (no button), with the
        # faithfulness in words and, under a sentence, the source sentences that drove it
        assert not page.read(
            "the buttons",
            lambda: [b for b in page.css("button") if "did the answer rely on" in b.text],
        )

        def attributed() -> list[Any]:
            return [
                r for r in log.list(event="attribution") if r.payload.get("answer_id") == second.seq
            ]

        # the queue attributes the first answer first: two attributions to wait for
        page.wait("attribution record", attributed, timeout=3 * ANSWER_TIMEOUT_S)
        page.wait_text("Which sources the answer relied on", timeout=60)
        page.wait_text("less likely")
        page.wait_text("What drove this sentence")
        page.wait(
            "every attribution shown",
            lambda: "Measuring which source sentences" not in page.text(),
        )
        # under a sentence: the source sentences that drove it, marked by score in their passage
        page.settled()
        drove = page.wait(
            "a 'what drove' panel",
            lambda: [
                e for e in page.css('[data-testid="stExpander"] summary') if "drove" in e.text
            ],
        )
        page.click(drove[-1])
        marks = page.wait(
            "source sentences marked by score",
            lambda: [m for m in page.css("mark.clinrag-driver") if m.is_displayed()],
        )
        assert all(m.get_attribute("title").startswith("attribution score ") for m in marks)
        page.shot("attribution-drivers")
        attribution = attributed()[-1]
        # attribution adds information and changes no check: the same sentences, supported
        assert [s["text"] for s in attribution.payload["sentences"]] == [
            s["text"] for s in second.payload["sentences"]
        ]
        assert all(s["supported"] for s in attribution.payload["sentences"])
        page.shot("attribution")
        page.click(page.button("Sign out"))
        page.wait_text("Sign in with your hospital account")

        # --- the auditor: the follow-up's record, its faithfulness, a replay
        page.sign_in("audrey")
        page.wait_text("Verify the chain")
        page.select("Event", "answer")
        page.select("Record", f"#{second.seq} ")
        page.wait_text(f"Record {second.seq}: answer")
        page.wait_text("Attribution computed after the answer")
        page.wait_text("Faithfulness")
        assert "less likely" in page.text()
        page.shot("audit-record")
        page.click(page.button("Replay this answer"))
        page.wait_text("replays to the same answer from the same sources", timeout=300)
        replay = log.list(event="replay")[-1]
        assert replay.user == "audrey" and replay.payload["unchanged"] is True, replay.payload
        page.shot("audit-replay")
    log.close()
    print(f"\nscreenshots: {page.shots}")


# --- hostile content: 20 XSS, Markdown-image and javascript: payloads ---------------------------

PAYLOADS = (
    "<script>fetch('{c}/p1');window.__pwned=1</script>",
    "<img src=x onerror=\"fetch('{c}/p2');window.__pwned=2\">",
    '<img src="{c}/p3.png">',
    "![chart]({c}/p4.png)",
    "[dose table](javascript:fetch('{c}/p5'))",
    "<svg/onload=fetch('{c}/p6')>",
    '<iframe src="{c}/p7"></iframe>',
    '<a href="javascript:window.__pwned=8">more</a>',
    "<body onload=fetch('{c}/p9')>",
    '<link rel=stylesheet href="{c}/p10.css">',
    "<style>@import url({c}/p11.css);</style>",
    '<div style="background-image:url({c}/p12.png)">box</div>',
    '<object data="{c}/p13"></object>',
    "<video><source onerror=\"fetch('{c}/p14')\"></video>",
    '<meta http-equiv="refresh" content="0;url={c}/p15">',
    "<input autofocus onfocus=\"fetch('{c}/p16')\">",
    "<details open ontoggle=\"fetch('{c}/p17')\">",
    '<img srcset="{c}/p18.png 1x">',
    "<math><mtext><table><mglyph><style><img src=x onerror=fetch('{c}/p19')>",
    "$\\href{{javascript:fetch('{c}/p20')}}{{click}}$",
)


@contextlib.contextmanager
def _canary() -> Iterator[tuple[str, list[str]]]:
    """A loopback server that records every request: any hit means a payload made the browser
    fetch something."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_hostile_payloads_in_sources_and_answers_never_run_or_fetch(
    tmp_path: Path, browser: Any, request: pytest.FixtureRequest
) -> None:
    """20 payloads sit in a guideline (plain text, kept verbatim by the loader) and in the
    model's answer (an OpenAI-compatible server on loopback returns them, cited). A clinician
    asks, sees the answer, and opens the source passage. Nothing executes (the page title and a
    window flag stay untouched), and the browser requests nothing but the app itself: not the
    canary server, not any other URL (Chromium's network log)."""
    from openai_server import serve_chat
    from selenium.webdriver.common.keys import Keys

    from audit.record import open_log as audit_log
    from core.config import load_settings
    from ingest.index import ingest

    with _canary() as (canary, hits):
        payloads = [p.format(c=canary) for p in PAYLOADS]
        lines = [f"Zorbamycin rule {i}: {p} applies." for i, p in enumerate(payloads, start=1)]
        home = build_library(tmp_path / "home", files=("hypertension-diagnosis-and-treatment.md",))
        (home / "sources" / "zorbamycin-hostile.txt").write_text(
            "Zorbamycin dosing rules\n\n" + "\n".join(lines) + "\n", encoding="utf-8"
        )
        summary = ingest(
            [home / "sources"], load_settings(env={"CLINRAG_HOME": str(home)}), progress=False
        )
        assert summary.count("added") == 1 and not summary.failed, summary.to_dict()
        answer_text = " ".join(f"{line} [1]" for line in lines)

        with (
            serve_chat(lambda messages, max_tokens: answer_text) as chat,
            serve_app(
                tmp_path,
                home,
                {
                    "CLINRAG_LLM": "openai",
                    "CLINRAG_LLM_BASE_URL": chat.base_url,
                    "CLINRAG_LLM_MODEL": "hostile-test",
                    "CLINRAG_ATTRIBUTION": "off",
                },
            ) as url,
        ):
            page = Page(browser, artifacts(request))
            browser.get(url)
            page.wait_text("Sign in with your hospital account")
            title = browser.title
            page.sign_in("carol")
            box = page.wait("chat input", lambda: page.css('[data-testid="stChatInputTextArea"]'))
            box[0].send_keys("What are the zorbamycin dosing rules?")
            box[0].send_keys(Keys.ENTER)
            page.wait_text("Audit record", timeout=ANSWER_TIMEOUT_S)
            assert chat.requests, "the app never called the model server"

            def open_sources() -> bool:
                # every source panel open, so each payload is on the screen as text; one at a
                # time, as a reader would: opening a panel reruns the page (its content is
                # drawn only when open), and a click landing mid-rerun may toggle it back
                page.settled()
                for details in page.css('[data-testid="stExpander"] details'):
                    summary = details.find_element(page.by.TAG_NAME, "summary")
                    if (
                        "zorbamycin" in summary.text.lower()
                        and details.get_attribute("open") is None
                    ):
                        page.click(summary)
                        return False
                # which rules the answer cites varies; the panels it shows hold payloads
                return "onerror" in page.text()

            page.wait("source panels open", open_sources)
            time.sleep(3)  # give any payload time to fire
            page.shot("hostile-payloads")
            body = page.text()

            # shown literally, as text: the payloads' own characters are on the screen
            assert "onerror" in body and "javascript:" in body and "<script>" in body, body
            record = audit_log(load_settings(env={"CLINRAG_HOME": str(home)})).list(event="answer")[
                -1
            ]
            assert "Zorbamycin rule 1" in record.payload["answer"], record.payload
            assert not record.payload["abstained"]
            # nothing ran
            assert browser.title == title and "pwned" not in browser.title
            assert browser.execute_script("return window.__pwned === undefined;") is True
            assert not browser.find_elements(page.by.CSS_SELECTOR, "iframe[src*='p7']")
            assert not browser.find_elements(page.by.CSS_SELECTOR, "img[src*='127.0.0.1']")
            # and no link a reader could click: not javascript:, not the planted URLs
            links = [a.get_attribute("href") or "" for a in page.css("a")]
            assert not [h for h in links if h.startswith("javascript") or canary in h], links
            # nothing was fetched: not the canary, and no URL outside the app
            time.sleep(1)
            assert hits == [], hits
            requested = _requested_urls(browser)
            foreign = [u for u in requested if not u.startswith((url, "data:", "blob:", "about:"))]
            assert requested and not foreign, foreign


def _requested_urls(driver: Any) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
