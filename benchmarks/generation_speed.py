"""Generation speed, float32 against ``llm_quantization = "int8-dynamic"`` (issue 17 item 4).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.generation_speed

The same 50 questions for both settings: the 40 of ``evaluation/sets/clinician``, then the
first 10 of ``data_samples/example_questions.json`` that are not among them. Each question's
prompt is the one clinrag would send (``assistant.generate.build_messages`` over the top-k
passages retrieved from a home with data_samples ingested); the packaged model drafts it
greedily with the adapter's decoding (repetition penalty 1.1, stops at end of sequence) up to
``--max-new-tokens`` (default: the ``max_new_tokens`` setting, 96). Both models are loaded in
this one process; each question runs on both, alternating which goes first, so a change of
load on the shared box falls on both alike.

Per draft: prefill (the prompt's forward pass, timed by a hook on the model), time to first
token (from calling ``generate`` to the first new token reaching the streamer), decode tokens
per second (the tokens after the first over the time after the first), total. Reported: sums
and medians per setting, the ratios int8 / float32, and how many of the 50 outputs are
identical token for token. Also the CPU's vector flags, torch's kernel path and the load
average at the start and the end. The home defaults to ``benchmarks/.cache/generation/home``
(git-ignored; ingested and the model converted once); ``--home DIR`` uses another.
Options: --limit N (first N questions), --max-new-tokens N, --json, --out FILE (the figures so
far, rewritten after every question, so a run stopped early still reports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import REPO, log, table

DEFAULT_HOME = common.CACHE_DIR / "generation" / "home"
SETTINGS = ("none", "int8-dynamic")


def questions() -> list[str]:
    """The 40 clinician questions, then 10 sample questions not among them."""
    clinician = REPO / "evaluation" / "sets" / "clinician" / "clinician_questions.jsonl"
    rows = [json.loads(line) for line in clinician.read_text(encoding="utf-8").splitlines()]
    out = [str(r["question"]) for r in rows]
    samples = json.loads((REPO / "data_samples" / "example_questions.json").read_text("utf-8"))
    seen = {q.strip().lower() for q in out}
    extra = [str(r["question"]) for r in samples if r["question"].strip().lower() not in seen]
    return out + extra[:10]


class _Clock:
    """A streamer and a forward hook that time one ``generate`` call."""

    def __init__(self) -> None:
        self.start = 0.0
        self.prefill = 0.0
        self.first: float | None = None
        self.last = 0.0
        self.tokens: list[int] = []
        self._prompt_seen = False
        self._forwards = 0
        self._t = 0.0

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate first hands the streamer the prompt itself
            self._prompt_seen = True
            return
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.last = now
        self.tokens.extend(int(x) for x in value.reshape(-1).tolist())

    def end(self) -> None:
        pass

    def pre_hook(self, *_: Any) -> None:
        self._t = time.perf_counter()

    def hook(self, *_: Any) -> None:
        if self._forwards == 0:
            self.prefill = time.perf_counter() - self._t
        self._forwards += 1


def draft(llm: Any, ids: list[int], max_new_tokens: int) -> dict[str, Any]:
    """One greedy draft with the adapter's decoding, timed."""
    import torch

    model, tok = llm._model, llm._tokenizer
    clock = _Clock()
    handles = [
        model.register_forward_pre_hook(clock.pre_hook),
        model.register_forward_hook(clock.hook),
    ]
    x = torch.tensor([ids])
    try:
        clock.start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                streamer=clock,
                pad_token_id=tok.pad_token_id,
                repetition_penalty=1.1,  # as TransformersLLM.stream
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        end = time.perf_counter()
    finally:
        for handle in handles:
            handle.remove()
    first = (clock.first or end) - clock.start
    after = len(clock.tokens) - 1
    decode_s = clock.last - (clock.first or clock.last)
    return {
        "prompt_tokens": len(ids),
        "new_tokens": len(clock.tokens),
        "prefill_s": clock.prefill,
        "ttft_s": first,
        "decode_s": decode_s,
        "decode_tokens": max(after, 0),
        "total_s": end - clock.start,
        "tokens": clock.tokens,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    decode_tokens = sum(r["decode_tokens"] for r in rows)
    decode_s = sum(r["decode_s"] for r in rows)
    return {
        "drafts": len(rows),
        "new_tokens": sum(r["new_tokens"] for r in rows),
        "prefill_s_sum": round(sum(r["prefill_s"] for r in rows), 2),
        "prefill_s_p50": round(statistics.median(r["prefill_s"] for r in rows), 3),
        "ttft_s_p50": round(statistics.median(r["ttft_s"] for r in rows), 3),
        "ttft_s_sum": round(sum(r["ttft_s"] for r in rows), 2),
        "decode_tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s else None,
        "total_s_sum": round(sum(r["total_s"] for r in rows), 2),
        "total_s_p50": round(statistics.median(r["total_s"] for r in rows), 3),
        "overall_tokens_per_s": round(
            sum(r["new_tokens"] for r in rows) / sum(r["total_s"] for r in rows), 2
        ),
    }


def run(
    home: Path, limit: int, max_new_tokens: int | None, out: Path | None = None
) -> dict[str, Any]:
    from assistant.generate import build_messages
    from assistant.prompts import load_template
    from assistant.retrieve import Retriever
    from benchmarks.attribution import cpu_report
    from benchmarks.load import prepare, settings_for
    from core import backends

    prepare(home, False)
    base = settings_for(home, "off")
    retriever = Retriever(base)
    template = load_template(base.prompt_template)
    qs = questions()[:limit]
    llms = {}
    for name in SETTINGS:
        llm = backends.create(
            "llm", "transformers", base.model_copy(update={"llm_quantization": name})
        )
        llm.warm_up()
        llms[name] = llm
    tokens_max = max_new_tokens or base.max_new_tokens
    prompts = [
        llms["none"]._prompt_ids(build_messages(template, q, retriever.retrieve(q)))  # type: ignore[attr-defined]
        for q in qs
    ]
    cpu_start = cpu_report()
    log(f"{len(qs)} questions, max_new_tokens {tokens_max}, load {cpu_start['load_average']}")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    head = {
        "questions_planned": len(qs),
        "max_new_tokens": tokens_max,
        "models": {n: llms[n].info.model_id for n in SETTINGS},
        "cpu_at_start": cpu_start,
    }
    report: dict[str, Any] = {}
    for i, ids in enumerate(prompts):
        order = SETTINGS if i % 2 == 0 else SETTINGS[::-1]
        for name in order:
            rows[name].append(draft(llms[name], ids, tokens_max))
        log(
            f"{i + 1}/{len(prompts)}: "
            + ", ".join(f"{n} {rows[n][-1]['total_s']:.1f} s" for n in SETTINGS)
            + f" (load {os.getloadavg()[0]:.1f})"
        )
        report = head | compare(qs, rows)
        if out is not None:  # after every question: a run stopped early still reports
            out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def compare(qs: list[str], rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Both settings' figures over the questions done so far, their ratios, equal outputs."""
    a, b = (rows[n] for n in SETTINGS)
    identical = sum(x["tokens"] == y["tokens"] for x, y in zip(a, b, strict=True))
    firsts = []
    for x, y in zip(a, b, strict=True):
        same = [p == q for p, q in zip(x["tokens"], y["tokens"], strict=False)]
        firsts.append(
            same.index(False) if False in same else min(len(x["tokens"]), len(y["tokens"]))
        )
    sums = {n: summary(rows[n]) for n in SETTINGS}
    f, q = sums["none"], sums["int8-dynamic"]
    return {
        "questions": len(a),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "settings": sums,
        "ratios_int8_over_float32": {
            "decode_tokens_per_s": _ratio(q["decode_tokens_per_s"], f["decode_tokens_per_s"]),
            "ttft_speedup (float32 / int8, p50)": _ratio(f["ttft_s_p50"], q["ttft_s_p50"]),
            "prefill_speedup (sum)": _ratio(f["prefill_s_sum"], q["prefill_s_sum"]),
            "total_speedup (sum)": _ratio(f["total_s_sum"], q["total_s_sum"]),
        },
        "identical_outputs": identical,
        "first_differing_token_p50": statistics.median(firsts) if firsts else None,
        "per_question": [
            {
                "question": qs[i],
                **{n: {k: v for k, v in rows[n][i].items() if k != "tokens"} for n in SETTINGS},
                "identical": a[i]["tokens"] == b[i]["tokens"],
            }
            for i in range(len(a))
        ],
    }


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def main(argv: list[str] | None = None) -> int:
    from core.config import apply_offline_environment

    apply_offline_environment()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", default=str(DEFAULT_HOME))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the figures so far here after every question")
    args = p.parse_args(argv)
    r = run(Path(args.home), args.limit, args.max_new_tokens, Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    cpu = r["cpu_at_start"]
    print(
        f"CPU {cpu['cpu']}; flags {' '.join(cpu['flags'])}; torch {cpu['torch']} kernel path "
        f"{cpu['torch_cpu_capability']}; OMP_NUM_THREADS={cpu['omp_num_threads'] or 'unset'}"
    )
    print(f"load average at start {cpu['load_average']}, at end {r['load_average_end']}")
    print(
        f"{r['questions']} of {r['questions_planned']} questions, max_new_tokens "
        f"{r['max_new_tokens']}; models {r['models']}"
    )
    keys = list(r["settings"]["none"])
    print(table(["", *SETTINGS], [(k, *(r["settings"][n][k] for n in SETTINGS)) for k in keys]))
    for k, v in r["ratios_int8_over_float32"].items():
        print(f"{k}: {v}")
    print(
        f"identical outputs token for token: {r['identical_outputs']} of {r['questions']}; "
        f"first differing token p50 {r['first_differing_token_p50']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
