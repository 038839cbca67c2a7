"""The one settings object.

Precedence, lowest first: defaults, an optional ``clinrag.toml``, ``CLINRAG_*`` environment
variables, then explicit overrides (CLI flags). ``load_settings`` is called only at the edges
(the CLI and the UI) and the result is passed down; nothing else reads the environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError

ENV_PREFIX = "CLINRAG_"
# The sinks audit.log.sinks accepts (core cannot import audit; the log parses them again).
_AUDIT_SINK_RE = re.compile(
    r"^(?:syslog(?::(?:auth|authpriv|daemon|user|local[0-7]))?|file:~?/.+)$"
)
# Environment names that are not settings fields.
_ENV_NOT_FIELDS = {"CLINRAG_CONFIG", "CLINRAG_ADMIN_PASSWORD"}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(Path(".clinrag"), description="Everything clinrag writes lives here.")

    # ingestion
    max_file_mb: float = Field(50.0, gt=0, description="Files larger than this are refused.")
    max_pages: int = Field(2000, gt=0, description="PDFs with more pages are refused.")
    parse_timeout_s: float = Field(30.0, gt=0, description="Per-file parse time limit.")
    chunk_chars: int = Field(700, ge=200, le=4000, description="Target chunk size.")
    chunk_overlap_sentences: int = Field(0, ge=0, le=3)

    # embedding and store
    embedder: str = "sentence_transformers"
    embedder_model: str = Field("", description="Local model dir; empty = packaged MiniLM.")
    embed_batch_size: int = Field(64, gt=0)
    embedder_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bfloat16 on a GPU or a CPU with native bf16 (about 2x faster ingest "
        "here, vectors within cosine 0.9999 of float32), float32 otherwise.",
    )
    embedder_backend: Literal["auto", "torch", "onnx-int8", "onnx-fp32"] = Field(
        "auto",
        description="auto: torch on a GPU or when embedder_dtype is pinned; on a CPU ONNX "
        "Runtime int8 (exported from the local weights on first use; 3.5x torch float32 on "
        "AVX2, 2.4x torch bfloat16 on AVX512-BF16, whole-process ingest) when its vectors met "
        "the quality bar at export, else float32 ONNX. torch: bfloat16 where native (see "
        "embedder_dtype). int8 vectors are an index identity of their own: auto follows an "
        "index built by torch or float32 ONNX; a pinned backend refuses an index built by the "
        "other identity (re-ingest, or set this back).",
    )
    vector_store: str = "chroma"
    chroma_url: str | None = Field(None, description="Use a Chroma server instead of embedded.")
    chroma_token: str | None = Field(
        None,
        description="Sent as 'Authorization: Bearer' to chroma_url, for the proxy in front of "
        "the Chroma server (the server itself checks no token: docs/design.md).",
    )
    database_url: str | None = Field(
        None,
        description="postgresql://user:password@host:port/db: keep the audit log, the manifest "
        "and the user accounts in this PostgreSQL database (one schema each) instead of SQLite "
        "files in the home, so several app servers share them. Unset: SQLite (the default).",
    )
    collection: str = "clinrag"
    vector_search_ef: int = Field(
        400,
        ge=10,
        le=10_000,
        description="How many graph neighbours the vector index explores per query (Chroma's "
        "HNSW ef_search; raised on an existing collection at start, applied when the server "
        "or process next loads it). Chroma's default of 100 missed a question's best "
        "passages outright in a 12,150-passage library (docs/benchmarks.md).",
    )

    # retrieval
    top_k: int = Field(5, gt=0, le=50)
    leading_document_passages: int = Field(
        3,
        ge=0,
        le=20,
        description="After the top_k passages, read up to this many more of the leading "
        "document from the next top_k ranks (its answer is often in a passage just below the "
        "cut); 0: top_k passages only.",
    )
    population_passage: bool = Field(
        True,
        description="When a question states an age and none of the leading document's "
        "passages read holds it, also read that document's passage whose statement does "
        '("Younger than 21: do not screen" for a 20-year-old), wherever it ranks.',
    )
    recommendation_passage: bool = Field(
        True,
        description="When none of the leading document's passages read holds a "
        "recommendation statement, also read its statement passage closest to the question, "
        "wherever it ranks (short administrative passages can fill the ranks: a summary's "
        "'Date Released' and 'Companion Documents' outranked its recommendations).",
    )
    candidates: int = Field(40, gt=0, description="Per-retriever candidates before fusion.")
    rrf_k: int = Field(60, gt=0)
    # Weighted RRF: on a MedQuAD dev sample (benchmarks/retrieval.py --sweep) BM25 at equal
    # weight pulled MiniLM's better ranking down (recall@5 0.900 vs 0.909 dense alone); at
    # 0.1-0.4 it adds a little (0.914-0.918) and still rescues exact terms (drug names, codes).
    dense_weight: float = Field(1.0, ge=0, description="RRF weight of the dense ranking.")
    lexical_weight: float = Field(0.3, ge=0, description="RRF weight of the BM25 ranking.")
    reranker_model: str | None = Field(None, description="Local cross-encoder dir, optional.")

    # generation
    llm: str = "transformers"
    llm_model: str = Field("", description="HF dir, .gguf file or server model; empty = packaged.")
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    llm_quantization: Literal["none", "int8-dynamic"] = Field(
        "none",
        description="int8-dynamic: the transformers model's linear layers run with int8 "
        "weights on a CPU (torch dynamic quantization at load; docs/benchmarks.md, generation "
        "speed). The model's identity says so (model_id), so its answers are never taken for "
        "float32 ones. A GPU runs bfloat16 either way.",
    )
    max_new_tokens: int = Field(96, gt=0, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    prompt_template: str = "answer_v1"
    generation_batching: bool = Field(
        True,
        description="In the app, one worker runs the model for every session, answers before "
        "attribution, and sessions ask at the same time (services/generation_worker.py); "
        "drafts asked within generation_batch_wait_ms of each other are generated as one "
        "batch of up to generation_batch_max. Off: one question at a time.",
    )
    app_serves_cli: bool = Field(
        True,
        description="The app also answers `clinrag ask` for its home, as `clinrag serve` "
        "does (loopback only, token in CLINRAG_HOME/serve.json), on the assistant it has "
        "loaded: a CLI question then skips the CLI's own start-up. Off: the app opens no "
        "port but its own.",
    )
    generation_batch_wait_ms: int = Field(50, ge=0, le=5000)
    generation_batch_max: int = Field(
        1,
        ge=1,
        le=64,
        description="Most drafts in one batch. 1: the worker runs drafts one at a time (still "
        "answers before attribution). On a 2-core CPU a batch of 8 drafts measured no more "
        "tokens/s than one by one (the long prompt passes dominate) and every row ended with "
        "the batch (docs/benchmarks.md); raise it where the measurement says it pays.",
    )
    max_question_chars: int = Field(2000, gt=0)
    questions_per_minute: int = Field(20, gt=0, description="Per user, counted in the audit log.")

    # citations and abstention
    support_threshold: float = Field(0.5, ge=0, le=1)
    abstain_min_relevance: float = Field(0.45, ge=-1, le=1)
    abstain_rare_term_zipf: float = Field(
        3.0,
        ge=0,
        le=8,
        description="Abstain when the question has words rarer than this in general English "
        "(Zipf scale; 3 = once per million words) and no retrieved passage mentions any of "
        "them. 0 turns it off.",
    )
    abstain_other_subtype: bool = Field(
        True,
        description="Abstain when the question names a numbered or lettered subtype (type 1 "
        "diabetes, hepatitis B) and the retrieved passages name only other subtypes of it, or "
        "asks about children (or one sex) and the leading guideline addresses adults (or the "
        "other sex) only.",
    )
    abstain_max_unsupported: float = Field(0.5, ge=0, le=1)
    unsupported_fallback: Literal["quote", "abstain"] = Field(
        "quote", description="When the model's wording fails verification: quote or abstain."
    )
    quote_min_evidence: float = Field(0.55, ge=-1, le=1)
    quote_min_titled_evidence: float = Field(
        0.6,
        ge=-1,
        le=1,
        description="The evidence is also strong enough to quote when a sentence read under "
        "its passage's title matches the question at least this well (cosine); 1 turns it off.",
    )
    quoted_draft: bool = Field(
        False,
        description="With a quoted answer on strong evidence, still have the model draft a "
        "free-text answer that is never shown (kept for auditors as removed sentences). Off: "
        "no draft is made and the record says so; the answer shown is the same.",
    )
    answer_style: Literal["auto", "quoted", "combined", "generated"] = Field(
        "auto",
        description="What an answer is made of: the guideline's sentences (quoted), the "
        "model's verified sentences after the matching recommendation (combined), or the "
        "model's verified sentences only (generated). auto: what clinrag eval measured as the "
        "more accurate for the model (assistant/policy.py MEASURED_STYLES), else combined.",
    )

    # yes/no questions (assistant/decide.py). The fitted logistic model (decide_weights.json)
    # gives the log-odds of yes against no; 0 is its own boundary. No uncertain band is
    # shipped: "uncertain" is right only for PubMedQA's "maybe" (11% of its answers).
    yes_no_decisions: bool = Field(
        True, description="Decide yes / no / uncertain for yes/no questions, from the evidence."
    )
    yes_no_bias: float = Field(
        0.0,
        description="The fitted log-odds (yes vs no) at which the decision turns.",
    )
    yes_no_margin: float = Field(
        0.0, ge=0, description="Within this of the bias the decision is uncertain."
    )

    # attribution and audit
    attribution: Literal[
        "auto", "attention", "hierarchical", "surrogate", "shap", "loo", "similarity", "off"
    ] = Field(
        "auto",
        description="auto: attention (one pass, per-head weights fitted for the answering "
        "model: shipped for the packaged model, or `clinrag attribution fit`) when weights "
        "exist for the model, else hierarchical ablation. The others are reference methods.",
    )
    attribution_ablations: int = Field(32, gt=0, le=1024)
    attribution_refine_sets: int = Field(
        5,
        ge=0,
        le=10,
        description="Attention attribution measures this many candidate top-3 sets (from its "
        "top 5, by predicted sum) and shows the one that hurts the answer most when left "
        "out; 0 or 1 = the per-head prediction alone (docs/benchmarks.md, Attribution).",
    )
    attribution_refine_by: Literal["masking", "removal"] = Field(
        "masking",
        description="How refinement measures a candidate set. masking: the answer rerun with "
        "the set hidden from it, over the full prompt's keys and values (a model that can "
        "mask: the transformers adapter), about 0.06x the generation per set; removal: the "
        "prompt without the set, from its first sentence on, about 0.25x per set (the first "
        "set's row is the faithfulness check's own; a model that cannot mask measures at most 2 "
        "sets by removal). The faithfulness check always removes.",
    )
    attribution_fallback_by: Literal["masking", "removal"] = Field(
        "masking",
        description="How hierarchical ablation (the method when the model has no fitted "
        "attention weights) measures its rows. masking: the answer rerun with the rows' "
        "sentences hidden from it, over the full prompt's keys and values (a model that can "
        "mask: the transformers adapter; 0.54x the generation on the benchmark's 100 answers, "
        "against 2.0x, for a top-3 drop 0.33 nats lower); removal: the prompt without them. "
        "A model that cannot mask removes. The faithfulness check always removes.",
    )
    attribution_calibrate: bool = Field(
        False,
        description="Attention attribution reads the faithfulness check's random removals "
        "first (the check then reuses them: no extra model pass) and corrects its per-head "
        "prediction with them. Off by default: it lowered the top-3 drop on the benchmark "
        "(docs/benchmarks.md, Attribution).",
    )
    attribution_calibrate_ridge: float = Field(
        3.0,
        gt=0,
        description="How far calibration trusts the per-head prediction over the measured "
        "rows (noise variance of a row over the prediction's error variance).",
    )
    attribution_max_sentences: int = Field(40, gt=0)
    attribution_retries: int = Field(
        3,
        ge=0,
        description="How many times the background queue tries an attribution again when the "
        "model server is busy (timeout, dropped connection, HTTP 5xx) before it records the "
        "attribution as failed.",
    )
    attribution_retry_seconds: float = Field(
        60.0,
        gt=0,
        description="Wait before the first retry of a busy attribution; doubled at each retry.",
    )
    audit_questions: Literal["verbatim", "redacted", "hashed"] = "verbatim"
    audit_checkpoint_every: int = Field(100, gt=0)
    audit_key_file: Path | None = Field(
        None,
        description="The audit signing key; empty = HOME/keys/audit.key. Put it outside the "
        "home, readable but not writable by the service, so it cannot be deleted with the log.",
    )
    audit_checkpoint_file: Path | None = Field(
        None,
        description="The audit log's signed head checkpoint (its history beside it); empty = "
        "HOME/audit.checkpoint.json. With database_url and several app servers: a path on a "
        "private mount they all share, like the key.",
    )
    audit_anchor: tuple[str, ...] = Field(
        (),
        description="Witness every signed audit head here: 'syslog[:FACILITY]' and/or "
        "'file:/absolute/path' (a list, or comma-separated). Use a sink the service cannot "
        "rewrite: another mount, another owner, or chattr +a.",
    )
    audit_stream: tuple[str, ...] = Field(
        (),
        description="Copy every audit record (a FHIR AuditEvent, one JSON line) to the SIEM: "
        "'syslog[:FACILITY]' and/or 'file:/absolute/path'. Failures are reported, not fatal.",
    )

    @field_validator("audit_anchor", "audit_stream", mode="before")
    @classmethod
    def _audit_sinks(cls, value: Any) -> Any:
        # TOML gives a list or a string, the environment a comma-separated string.
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            for spec in value:
                if not isinstance(spec, str) or not _AUDIT_SINK_RE.match(spec.strip()):
                    raise ValueError(
                        f"{spec!r} is not 'syslog', 'syslog:FACILITY' (auth, authpriv, daemon, "
                        "user, local0-local7) or 'file:/absolute/path'"
                    )
            return tuple(spec.strip() for spec in value)
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from core.database import ADAPTERS

        scheme = value.split("://", 1)[0].split("+", 1)[0].lower() if "://" in value else ""
        if scheme not in ADAPTERS:
            raise ValueError(
                "database_url must be a PostgreSQL URL (postgresql://user:password@host/db); "
                "leave it unset for the embedded SQLite files"
            )
        return value.strip()

    @field_validator("audit_key_file", "audit_checkpoint_file", mode="after")
    @classmethod
    def _expand_key_file(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    user: str = Field("local", description="Recorded as the asker in the audit log.")
    role: str = "clinician"

    # web app sign-in
    sso_provider: str | None = Field(
        None,
        description="Offer single sign-on through Streamlit's st.login with this provider "
        "(configured under [auth] in .streamlit/secrets.toml; 'default' for the unnamed one).",
    )
    sso_claim: str = Field(
        "email",
        description="The identity-token claim that names the user. With 'email' the token "
        "must also say email_verified = true.",
    )
    sso_issuer: str | None = Field(
        None,
        description="When set, only identity tokens whose 'iss' is exactly this are accepted "
        "(others are refused and audited). A tenant's issuer names the tenant, so this also "
        "pins it (e.g. https://login.microsoftonline.com/TENANT-ID/v2.0).",
    )

    # derived locations
    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def manifest_path(self) -> Path:
        return self.home / "manifest.sqlite"

    @property
    def lock_path(self) -> Path:
        return self.home / "writer.lock"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def audit_db(self) -> Path:
        return self.home / "audit.sqlite"

    @property
    def audit_checkpoint(self) -> Path:
        if self.audit_checkpoint_file is not None:
            return self.audit_checkpoint_file
        return self.home / "audit.checkpoint.json"

    @property
    def audit_key(self) -> Path:
        """The audit signing key (``audit_key_file`` when set): backup and restore use it too."""
        if self.audit_key_file is not None:
            return self.audit_key_file
        return self.home / "keys" / "audit.key"

    @property
    def question_key(self) -> Path:
        """The site key of the audit records' question hashes, beside the default audit key.

        Always under the home, even when the audit key is provisioned elsewhere: it is
        created on first use, which a read-only secrets mount would refuse."""
        return self.home / "keys" / "question.key"


# The settings that decide an answer, given the library (index version) and the models'
# weights. One list: every answer record carries their values, replay restores them, and the
# evaluation cache keys answers by them. Add a setting here when it changes what is answered.
ANSWER_SETTINGS: tuple[str, ...] = (
    "embedder_backend",
    "top_k",
    "leading_document_passages",
    "population_passage",
    "recommendation_passage",
    "candidates",
    "rrf_k",
    "dense_weight",
    "lexical_weight",
    "reranker_model",
    "llm",
    "llm_model",
    "llm_base_url",
    "llm_quantization",
    "max_new_tokens",
    "temperature",
    "prompt_template",
    "support_threshold",
    "abstain_min_relevance",
    "abstain_max_unsupported",
    "abstain_rare_term_zipf",
    "abstain_other_subtype",
    "unsupported_fallback",
    "quote_min_evidence",
    "quote_min_titled_evidence",
    "quoted_draft",
    "answer_style",
    "yes_no_decisions",
    "yes_no_bias",
    "yes_no_margin",
)
# Checks added after the first records were written: a record without the setting was
# answered without the check, so restoring it turns the check off.
ANSWER_SETTINGS_ABSENT_MEANS: dict[str, Any] = {
    "abstain_rare_term_zipf": 0.0,
    "abstain_other_subtype": False,
    # answers before the setting read top_k passages only
    "leading_document_passages": 0,
    # answers before the setting read no passage for the question's ages beyond the ranks
    "population_passage": False,
    # answers before the setting read no statement passage beyond the ranks
    "recommendation_passage": False,
    # answers before the setting showed the model's wording whenever most of it verified
    "answer_style": "generated",
    "yes_no_decisions": False,
    # answers before the setting drafted even when the guideline's words were the answer
    "quoted_draft": True,
    # answers before the setting judged strong evidence on sentences read alone
    "quote_min_titled_evidence": 1.0,
    # answers before the setting ran the model in float32
    "llm_quantization": "none",
}


def answer_settings(settings: Settings, *, top_k: int | None = None) -> dict[str, Any]:
    """The values of :data:`ANSWER_SETTINGS` (``top_k`` as asked, when the caller chose one)."""
    values = settings.model_dump(mode="json", include=set(ANSWER_SETTINGS))
    if top_k is not None:
        values["top_k"] = top_k
    return {name: values[name] for name in ANSWER_SETTINGS}


def with_answer_settings(settings: Settings, recorded: Mapping[str, Any]) -> Settings:
    """``settings`` with the answer-deciding values of a record put back (for replay)."""
    kept = {k: v for k, v in recorded.items() if k in ANSWER_SETTINGS}
    return Settings.model_validate(settings.model_dump() | ANSWER_SETTINGS_ABSENT_MEANS | kept)


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_FIELDS:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in fields:
            raise ConfigError(
                f"Unknown environment variable {name}. Valid names are CLINRAG_ plus one of: "
                + ", ".join(sorted(k.upper() for k in fields))
            )
        values[key] = raw
    return values


def load_settings(
    config_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = Path(config_file) if config_file else Path(env.get("CLINRAG_CONFIG", "clinrag.toml"))
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}); fix or remove it.") from exc
    elif config_file:
        raise ConfigError(f"Config file {path} does not exist.")
    values.update(_env_values(env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings ({problems}). Check clinrag.toml and CLINRAG_* variables."
        ) from exc


def offline_environment() -> dict[str, str]:
    """Variables that keep every library offline and telemetry-free; applied at the edges."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }


def apply_offline_environment() -> None:
    for key, value in offline_environment().items():
        os.environ.setdefault(key, value)


def ensure_home(settings: Settings) -> Path:
    """Create the home folder owner-only: it holds the store, audit log and keys."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        home.chmod(0o700)
    return home
