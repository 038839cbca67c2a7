"""Tampering with the audit log: which attacks verify catches, without and with the anchor.

    .venv/bin/python -m benchmarks.tamper

The attacker has the service's file access: they can read and replace everything in the home,
the signing key included, drop the append-only triggers and re-sign checkpoints. They cannot
rewrite the anchor (a file on another mount, made append-only; or the SIEM's syslog copy).

For each attack a fresh log is built (``--records`` records, a signed history line every 10,
every head witnessed in an anchor file outside the home, and a copy taken at two thirds for
the rollback), the attack is applied, and the log is verified twice with the real verifier:
``AuditLog.verify()`` as a home with no anchor would be, then ``AuditLog.verify([anchor])``.
``detected`` means verify returned ``ok=False``. The control row (no attack) must pass both.

Exit status 1 if any attack goes undetected with the anchor, or the control fails.
Options: --records N (default 30), --json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from audit.log import AuditLog, Record, VerifyResult
from audit.log.chain import GENESIS_HASH, record_hash
from audit.log.checkpoint import checkpoint_mac, write_head
from audit.log.migrations import MIGRATIONS
from core.config import apply_offline_environment

EVERY = 10  # a signed history line every 10 records


@dataclass(frozen=True)
class Home:
    """One clinrag audit home as the attacker sees it, plus its witness outside."""

    root: Path
    anchor: Path
    rollback_copy: Path

    @property
    def db(self) -> Path:
        return self.root / "audit.sqlite"

    @property
    def checkpoint(self) -> Path:
        return self.root / "audit.checkpoint.json"

    @property
    def history(self) -> Path:
        return self.root / "audit.checkpoint.history.jsonl"

    @property
    def key(self) -> Path:
        return self.root / "keys" / "audit.key"

    def log(self, *, anchored: bool = True) -> AuditLog:
        """The service's view: appends are witnessed when ``anchored``."""
        anchor = [f"file:{self.anchor}"] if anchored else None
        return AuditLog(self.db, self.checkpoint, self.key, checkpoint_every=EVERY, anchor=anchor)


def build(root: Path, records: int, *, tag: str = "a") -> Home:
    home = Home(root / "home", root / "witness" / "anchor.jsonl", root / "rollback")
    log = home.log()
    cut = records * 2 // 3
    for i in range(1, records + 1):
        event = ("answer", "login", "export")[i % 3]
        payload: dict[str, Any] = {"answer": f"Start metformin {500 + i} mg [1].", "n": i}
        if event != "answer":
            payload = {"n": i, "home": tag}
        log.append(event, f"dr{i % 4}", "clinician", payload)
        if i == cut:
            log.backup(home.rollback_copy / "audit.sqlite")
    log.close()
    return home


# --------------------------------------------------------------------------- attacker tools


def _remove_db(home: Home) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(home.db) + suffix).unlink(missing_ok=True)


def _connect(home: Home) -> sqlite3.Connection:
    conn = sqlite3.connect(home.db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS records_no_update")
    conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
    conn.execute("DROP TRIGGER IF EXISTS records_insert_in_order")
    return conn


def _restore_triggers(conn: sqlite3.Connection) -> None:
    # Put the append-only triggers back so the database looks untouched.
    for _name, sql in MIGRATIONS:
        if "TRIGGER" in sql:
            conn.executescript(sql)
    conn.close()


def _rows(conn: sqlite3.Connection) -> list[Record]:
    out = []
    for row in conn.execute(
        'SELECT seq, ts, event, "user", role, payload, prev_hash, hash FROM records ORDER BY seq'
    ):
        seq, ts, event, user, role, payload, prev, digest = row
        out.append(Record(seq, ts, event, user, role, json.loads(payload), prev, digest))
    return out


def _rechain(conn: sqlite3.Connection) -> None:
    """Recompute every prev_hash and hash, as an attacker who edited a row would."""
    prev = GENESIS_HASH
    for r in _rows(conn):
        digest = record_hash(r.seq, r.ts, r.event, r.user, r.role, r.payload, prev)
        conn.execute(
            "UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, r.seq)
        )
        prev = digest


def _resign(home: Home, key: bytes, *, history_upto: int | None = None) -> None:
    """Rewrite the history file and head checkpoint for the records now in the database."""
    conn = sqlite3.connect(home.db)
    records = _rows(conn)
    conn.close()
    lines = []
    for r in records:
        if r.seq % EVERY == 0 and (history_upto is None or r.seq <= history_upto):
            entry: dict[str, object] = {"seq": r.seq, "hash": r.hash, "count": r.seq, "ts": r.ts}
            entry["mac"] = checkpoint_mac(key, "history", entry)
            lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    home.history.write_text("".join(lines))
    last = records[-1]
    head: dict[str, object] = {
        "seq": last.seq,
        "hash": last.hash,
        "ts": last.ts,
        "history": len(lines),
    }
    write_head(home.checkpoint, key, head)


# --------------------------------------------------------------------------- attacks


def control(home: Home) -> None:
    """No attack: both verifications must pass."""


def delete(home: Home) -> None:
    """Delete the database, checkpoint and history; the key is left in place."""
    _remove_db(home)
    home.checkpoint.unlink()
    home.history.unlink()


def delete_all(home: Home) -> None:
    """Delete the whole home, the signing key too (the service starts a new log)."""
    shutil.rmtree(home.root)


def delete_rows(home: Home) -> None:
    """Drop the triggers, DELETE every row, remove the checkpoint and history files."""
    conn = _connect(home)
    conn.execute("DELETE FROM records")
    _restore_triggers(conn)
    home.checkpoint.unlink()
    home.history.unlink()


def truncate(home: Home) -> None:
    """Delete the newest third of the records and re-sign head and history with the key."""
    key = home.key.read_bytes()
    conn = _connect(home)
    last = conn.execute("SELECT MAX(seq) FROM records").fetchone()[0]
    conn.execute("DELETE FROM records WHERE seq > ?", (last * 2 // 3,))
    _restore_triggers(conn)
    _resign(home, key)


def rollback(home: Home) -> None:
    """Put back the earlier genuine copy of database, checkpoint and history (same key)."""
    _remove_db(home)
    shutil.copyfile(home.rollback_copy / "audit.sqlite", home.db)
    shutil.copyfile(home.rollback_copy / "audit.checkpoint.json", home.checkpoint)
    home.history.unlink(missing_ok=True)
    if (home.rollback_copy / home.history.name).exists():  # none before the first line
        shutil.copyfile(home.rollback_copy / home.history.name, home.history)


def rollback_and_extend(home: Home) -> None:
    """Roll back, then let the service run on: new records are witnessed as usual."""
    rollback(home)
    with home.log() as log:
        for i in range(12):
            log.append("login", "dr9", "clinician", {"after_rollback": i})


def key_swap(home: Home) -> None:
    """Edit a record, rechain, and re-sign everything with a new key put in the old one's place
    (an attacker who can replace the key without reading it)."""
    conn = _connect(home)
    conn.execute(
        "UPDATE records SET payload = ? WHERE seq = 4",
        (json.dumps({"answer": "Start metformin 5000 mg [1].", "n": 4}, separators=(",", ":")),),
    )
    _rechain(conn)
    _restore_triggers(conn)
    key = os.urandom(32)
    home.key.write_bytes(key)
    _resign(home, key)


def home_swap(home: Home) -> None:
    """Swap in another clinrag home's log and key (genuine, just not this one)."""
    other = build(home.root.parent / "other", 40, tag="b")
    _remove_db(home)
    for source, target in (
        (other.db, home.db),
        (other.checkpoint, home.checkpoint),
        (other.history, home.history),
        (other.key, home.key),
    ):
        shutil.copyfile(source, target)


def payload_edit(home: Home) -> None:
    """Drop the append-only triggers, change an answer's dose, rechain, re-sign with the key."""
    key = home.key.read_bytes()
    conn = _connect(home)
    conn.execute(
        "UPDATE records SET payload = ? WHERE seq = 7",
        (json.dumps({"answer": "Start metformin 50 mg [1].", "n": 7}, separators=(",", ":")),),
    )
    _rechain(conn)
    _restore_triggers(conn)
    _resign(home, key)


def history_edit(home: Home) -> None:
    """Remove the signed history lines (they localise a rewrite) and re-sign the head."""
    _resign(home, home.key.read_bytes(), history_upto=0)


ATTACKS: list[tuple[str, Callable[[Home], None]]] = [
    ("control (no attack)", control),
    ("delete db+checkpoint+history", delete),
    ("delete everything incl. key", delete_all),
    ("delete rows+checkpoint", delete_rows),
    ("truncate, re-signed", truncate),
    ("rollback to earlier copy", rollback),
    ("rollback, then run on", rollback_and_extend),
    ("key swap, re-signed", key_swap),
    ("home swap (log + key)", home_swap),
    ("payload edit, triggers dropped", payload_edit),
    ("history edit, re-signed", history_edit),
]


@dataclass(frozen=True)
class Outcome:
    attack: str
    without_anchor: bool  # detected
    with_anchor: bool  # detected
    reason_without: str
    reason_with: str


def _verify(home: Home, anchors: list[Path]) -> VerifyResult:
    with AuditLog(home.db, home.checkpoint, home.key, checkpoint_every=EVERY) as log:
        return log.verify(anchors)


def run(root: Path, records: int = 30) -> list[Outcome]:
    outcomes = []
    for number, (name, attack) in enumerate(ATTACKS):
        home = build(root / f"case{number}", records)
        attack(home)
        plain = _verify(home, [])
        anchored = _verify(home, [home.anchor])
        outcomes.append(Outcome(name, not plain.ok, not anchored.ok, plain.reason, anchored.reason))
    return outcomes


def _short(reason: str) -> str:
    """The reason without its timestamps and file names, for the table."""
    return re.sub(r" at \d{4}-\S+Z| \([^()]*\)", "", reason).split(";")[0][:88]


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clinrag-tamper-") as tmp:
        outcomes = [
            Outcome(
                o.attack,
                o.without_anchor,
                o.with_anchor,
                o.reason_without.replace(tmp + os.sep, ""),
                o.reason_with.replace(tmp + os.sep, ""),
            )
            for o in run(Path(tmp), args.records)
        ]
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2))
    else:
        print(
            f"{args.records} records per log, a signed history line every {EVERY}, a genuine "
            f"copy taken at record {args.records * 2 // 3}; the attacker reads the key and "
            "cannot rewrite the anchor.\n"
        )
        width = max(len(o.attack) for o in outcomes)
        print(f"{'attack':<{width}}  without anchor  with anchor  what verify said (anchored)")
        for o in outcomes:
            mark = {True: "detected", False: "-"}
            print(
                f"{o.attack:<{width}}  {mark[o.without_anchor]:>14}  {mark[o.with_anchor]:>11}  "
                f"{_short(o.reason_with)}"
            )
    control_ok = not outcomes[0].without_anchor and not outcomes[0].with_anchor
    missed = [o.attack for o in outcomes[1:] if not o.with_anchor]
    if missed or not control_ok:
        print(f"FAILED: control ok={control_ok}; undetected with the anchor: {missed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
