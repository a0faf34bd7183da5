#!/usr/bin/env python3
"""idem's benchmarks against native code and peers (issue 7), run by `bench/run.sh`.

Every workload runs idem and its references side by side, in one run, on the same
deterministically generated data, interleaved rep by rep so that the noise of a shared machine
falls on all of them alike. Each figure is the median wall time of N runs; peak RSS comes
from GNU time's `%M` (a child forked by Python itself would report Python's own high-water
mark, which Linux carries across exec). Ratios are printed against
the reference the issue names, never asserted: the figures are for people, CI only checks
that the harness runs.

    bench/bench.py [--quick | --full] [--only upsert,each,pages,classic,cleanup,startup,pg-upsert,pg-coop]
                   [--reps N] [--idem PATH] [--json FILE] [--pages-records N]

Data lives under target/bench-data (gitignored), is reused between runs when its size
and seed match, and is never written anywhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "target" / "bench-data"
SEED = 7  # issue 7; change it and every data file is generated anew
DAY = 86_400


@dataclass(frozen=True)
class Sizes:
    """How big each workload is, and how many times each measurement is repeated."""

    upsert_rows: int
    rss_small_rows: int  # the smaller file of the "flat in the file's size" comparison
    each_records: int
    pages_records: int  # the `each` that writes a directory and a file per record
    classic_sizes: tuple[int, ...]
    cleanup_dirs: int
    cleanup_files_per_dir: int
    startup_runs: int  # warm cache and bash
    startup_cold_runs: int  # empty cache dir, and --no-cache
    reps: int
    slow_reps: int  # references that take a minute a run (sqlite-utils, the classic pattern)


QUICK = Sizes(100_000, 25_000, 50_000, 2_000, (1_000, 3_000), 100, 100, 15, 5, 3, 1)
FULL = Sizes(1_000_000, 250_000, 1_000_000, 100_000, (1_000, 10_000, 30_000), 1_000, 100, 50, 20, 5, 1)
# Records of the `pages` workload traced with `strace -f -c` for system calls per record (the
# counts are per record, so a prefix of the data gives them; a traced run is slow).
STRACE_RECORDS = 2_000
# With --callgrind: sizes counted (and twice them, so start-up drops out of the difference).
CALLGRIND = False
CALLGRIND_EACH, CALLGRIND_PAGES, CALLGRIND_ROWS = 10_000, 5_000, 20_000


# --------------------------------------------------------------------------------------------
# Running and measuring


@dataclass
class Run:
    wall: float
    cpu: float  # user + system of the child
    rss_kib: int | None  # None when not measured
    code: int
    out: str
    err: str


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


class Failed(Exception):
    """A contender failed or produced a wrong result: its row says so, the others go on."""


def run(cmd: list[str], cwd: Path, env: dict | None = None, stdin: Path | None = None,
        rss: bool = True) -> Run:
    """Run one command, timing it from spawn to reap; its output goes to temporary files, so
    a chatty command is never slowed by a pipe that is not read. With `rss`, under GNU time
    for the peak RSS (which adds a millisecond of its own: start-up runs go without)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        wrap = [GNU_TIME, "-q", "-f", "%M", "-o", peak.name, "--"] if rss and GNU_TIME else []
        inp = open(stdin, "rb") if stdin else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            p = subprocess.Popen(wrap + cmd, cwd=cwd, env=env, stdin=inp, stdout=out, stderr=err)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
        finally:
            if stdin:
                inp.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        kib = next((int(l) for l in peak.read().split() if l.isdigit()), None) if wrap else None
        return Run(wall, ru.ru_utime + ru.ru_stime, kib, p.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def ok(r: Run, what: str) -> Run:
    if r.code != 0:
        tail = (r.err.strip() or r.out.strip())[-600:]
        raise Failed(f"{what} exited {r.code}: {tail}")
    return r


@dataclass
class Row:
    """One line of the results: a contender on a workload."""

    workload: str
    contender: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""
    skipped: str = ""  # why there is no figure

    @property
    def median(self) -> float | None:
        return statistics.median(r.wall for r in self.runs) if self.runs else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(r.cpu for r in self.runs) if self.runs else None

    @property
    def rss_mib(self) -> float | None:
        peaks = [r.rss_kib for r in self.runs if r.rss_kib is not None]
        return max(peaks) / 1024 if peaks else None


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.targets: list[tuple[str, str, str, bool | None]] = []  # what, target, measured, met
        self.notes: list[str] = []  # counts printed under the tables (system calls, instructions)

    def row(self, workload: str, contender: str) -> Row:
        for r in self.rows:
            if r.workload == workload and r.contender == contender:
                return r
        r = Row(workload, contender)
        self.rows.append(r)
        return r

    def get(self, workload: str, contender: str) -> Row | None:
        return next((r for r in self.rows if r.workload == workload and r.contender == contender), None)

    def ratio(self, workload: str, a: str, b: str) -> float | None:
        ra, rb = self.get(workload, a), self.get(workload, b)
        if ra and rb and ra.median is not None and rb.median:
            return ra.median / rb.median
        return None

    def cpu_ratio(self, workload: str, a: str, b: str) -> float | None:
        ra, rb = self.get(workload, a), self.get(workload, b)
        if ra and rb and ra.runs and rb.runs and rb.cpu:
            return ra.cpu / rb.cpu
        return None

    def both(self, workload: str, a: str, b: str) -> str:
        """The wall ratio (what the targets are judged on) and the CPU ratio (steadier when
        other work shares the machine)."""
        return f"{fmt_ratio(self.ratio(workload, a, b))} (CPU {fmt_ratio(self.cpu_ratio(workload, a, b))})"

    def target(self, what: str, target: str, measured: str, met: bool | None) -> None:
        self.targets.append((what, target, measured, met))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def attempt(res: Results, workload: str, contender: str, fn) -> None:
    """Run one contender's measurement; a failure becomes its row's note."""
    try:
        fn()
    except Failed as e:
        res.row(workload, contender).skipped = f"failed: {e}"
        say(f"  {contender}: FAILED: {e}")


# --------------------------------------------------------------------------------------------
# Tools


@dataclass
class Tools:
    idem: Path | None
    native: Path | None
    sqlite3: str | None
    sqlite_utils: str | None
    find: str | None
    bash: str | None

    @staticmethod
    def discover(idem: str | None) -> "Tools":
        def exe(p: Path) -> Path | None:
            return p if p.is_file() and os.access(p, os.X_OK) else None

        venv_su = REPO / "target" / "bench" / "venv" / "bin" / "sqlite-utils"
        # bench/run.sh builds idem into $CARGO_TARGET_DIR when it is set.
        built = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        if not built.is_absolute():
            built = REPO / built
        return Tools(
            idem=exe(Path(idem).resolve()) if idem else exe(built / "release" / "idem"),
            native=exe(REPO / "target" / "bench" / "release" / "idem-bench-native"),
            sqlite3=shutil.which("sqlite3"),
            sqlite_utils=str(venv_su) if exe(venv_su) else shutil.which("sqlite-utils"),
            find=shutil.which("find"),
            bash=shutil.which("bash"),
        )


def idem_env(cache: Path | None, now: int | None = None) -> dict:
    """A clean environment for idem: none of the caller's IDEM_* settings, a pinned cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEM_") and k != "RUST_LOG"}
    env["NO_COLOR"] = "1"
    if cache is not None:
        env["IDEM_CACHE_DIR"] = str(cache)
    if now is not None:
        env["IDEM_NOW"] = str(now)
    return env


def idem_report(r: Run, what: str) -> dict:
    ok(r, what)
    try:
        return json.loads(r.out)
    except json.JSONDecodeError as e:
        raise Failed(f"{what}: the JSON report does not parse ({e}): {r.out[:300]}")


def counters(report: dict) -> dict[str, int]:
    """The counters of every step, added up."""
    total: dict[str, int] = {}
    for step in report.get("steps", []):
        c = step.get("counters") or {}
        items = c.items() if isinstance(c, dict) else ((x["name"], x["value"]) for x in c)
        for k, v in items:
            total[k] = total.get(k, 0) + v
    return total


# --------------------------------------------------------------------------------------------
# Data, generated deterministically


FIRST = ["Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace", "Hedy",
         "Ivan", "John", "Katherine", "Leslie", "Margaret", "Niklaus", "Ole", "Radia", "Shafi",
         "Tim", "Whitfield", "Yukihiro", "Zhores"]
LAST = ["Lovelace", "Turing", "Liskov", "Shannon", "Knuth", "Dijkstra", "Allen", "Hopper",
        "Lamarr", "Sutherland", "Backus", "Johnson", "Lamport", "Hamilton", "Wirth", "Dahl",
        "Perlman", "Goldwasser", "Berners-Lee", "Diffie", "Matsumoto", "Alferov"]


def users_csv(n: int) -> Path:
    """`id,name,email` for ids 1..n: the rows of a smaller file are a prefix of a larger one's."""
    path = DATA / f"users-{n}-s{SEED}.csv"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    say(f"  generating {path.name}")
    rng = random.Random(SEED)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        f.write("id,name,email\n")
        lines = []
        for i in range(1, n + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            lines.append(f"{i},{first} {last},{first.lower()}.{last.lower()}.{i}@example.org\n")
            if len(lines) == 10_000:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))
    tmp.rename(path)
    return path


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def link(src: Path, dst: Path) -> None:
    """Put a data file inside a root without copying it (idem refuses links out of the root)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# --------------------------------------------------------------------------------------------
# Workload: upsert


UPSERT_PLAN = """steps:
  - upsert: {db}
    table: users
    key: id
    from: users.csv
"""

DEFAULT_SCHEMA = ["CREATE TABLE users (id INTEGER, name TEXT, email TEXT, PRIMARY KEY (id))"]

SQLITE3_SCRIPT = """.bail on
.mode csv
BEGIN;
CREATE TEMP TABLE staging (id, name, email);
.import --skip 1 --schema temp users.csv staging
INSERT INTO users (id, name, email) SELECT id, name, email FROM temp.staging WHERE true
  ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email
  WHERE users.name IS NOT excluded.name OR users.email IS NOT excluded.email;
COMMIT;
"""


def probe_schema(tools: Tools, cache: Path) -> list[str]:
    """The table idem creates from this data, so every contender starts from the same one."""
    root = fresh_dir(DATA / "upsert-probe")
    (root / "users.csv").write_text("id,name,email\n1,Ada Lovelace,ada@example.org\n2,Alan Turing,alan@example.org\n")
    (root / "idem.yml").write_text(UPSERT_PLAN.format(db="probe.db"))
    if tools.idem:
        r = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
        if r.code == 0 and (root / "probe.db").exists():
            with sqlite3.connect(root / "probe.db") as c:
                sql = [s for (s,) in c.execute(
                    "SELECT sql FROM sqlite_master WHERE tbl_name = 'users' AND sql IS NOT NULL "
                    "ORDER BY type = 'index', name")]
            if sql:
                return sql
        say(f"  could not probe idem's schema (exit {r.code}); using {DEFAULT_SCHEMA[0]}")
    return DEFAULT_SCHEMA


def empty_db(path: Path, schema: list[str]) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with sqlite3.connect(path) as c:
        for s in schema:
            c.execute(s)
    c.close()


def row_count(db: Path) -> int:
    with sqlite3.connect(db) as c:
        n = c.execute("SELECT count(*) FROM users").fetchone()[0]
    c.close()
    return n


def bench_upsert(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    n = sz.upsert_rows
    say(f"upsert: {n:,} rows")
    csv = users_csv(n)
    root = fresh_dir(DATA / "upsert")
    link(csv, root / "users.csv")
    schema = probe_schema(tools, cache)
    (root / "load.sql").write_text(SQLITE3_SCRIPT)
    W1, W2 = f"upsert {n:,} rows, empty table", f"upsert {n:,} rows again, unchanged"

    def idem_load(db: str, expect: str) -> tuple[Run, dict]:
        (root / "idem.yml").write_text(UPSERT_PLAN.format(db=db))
        r = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
        c = counters(idem_report(r, "idem apply"))
        want = {"inserted": n} if expect == "fresh" else {"unchanged": n}
        if any(c.get(k, 0) != v for k, v in want.items()) or (expect == "again" and
                                                             c.get("inserted", 0) + c.get("updated", 0)):
            raise Failed(f"idem reported {c}, expected {want}")
        return r, c

    contenders = []
    if tools.native:
        contenders.append(("native rusqlite", lambda db, _e: ok(run(
            [str(tools.native), "upsert", db, "users", "users.csv"], root), "native")))
    else:
        for w in (W1, W2):
            res.row(w, "native rusqlite").skipped = "not built (bench/setup.sh builds bench/native)"
    if tools.sqlite3:
        contenders.append(("sqlite3 shell", lambda db, _e: ok(run(
            [tools.sqlite3, db], root, stdin=root / "load.sql"), "sqlite3")))
    else:
        for w in (W1, W2):
            res.row(w, "sqlite3 shell").skipped = "no sqlite3 on PATH (apt-get install sqlite3)"
    if tools.idem:
        contenders.append(("idem", lambda db, e: idem_load(db, e)[0]))
    else:
        for w in (W1, W2):
            res.row(w, "idem").skipped = "no idem binary (cargo build --release -p idem)"

    def once(name, fn, db):
        def go():
            empty_db(root / db, schema)
            r1 = fn(db, "fresh")
            if (got := row_count(root / db)) != n:
                raise Failed(f"{got:,} rows after the load, expected {n:,}")
            r2 = fn(db, "again")
            res.row(W1, name).runs.append(r1)
            res.row(W2, name).runs.append(r2)
            say(f"  {name}: {r1.wall:.3f} s, again {r2.wall:.3f} s, RSS {mib(r1.rss_kib)}")
        attempt(res, W1, name, go)

    for rep in range(reps):
        for name, fn in contenders:
            if not res.row(W1, name).skipped:
                once(name, fn, f"{name.split()[0]}.db")
    if tools.sqlite_utils:
        for rep in range(sz.slow_reps):
            once("sqlite-utils", lambda db, _e: ok(run(
                [tools.sqlite_utils, "upsert", db, "users", "users.csv", "--csv", "--pk", "id"], root),
                "sqlite-utils"), "sqlite-utils.db")
    else:
        for w in (W1, W2):
            res.row(w, "sqlite-utils").skipped = "not installed (bench/setup.sh installs it in a venv)"
    for f in root.glob("*.db"):
        f.unlink()

    # Memory: the same load on a quarter of the file, so flatness shows as equal peaks.
    small = sz.rss_small_rows
    W3 = f"peak RSS, {small:,} vs {n:,} rows"
    if tools.idem and res.get(W1, "idem") and res.get(W1, "idem").runs:
        csv_small = users_csv(small)
        sroot = fresh_dir(DATA / "upsert-small")
        link(csv_small, sroot / "users.csv")
        (sroot / "idem.yml").write_text(UPSERT_PLAN.format(db="idem.db"))

        def go():
            for rep in range(min(reps, 3)):
                empty_db(sroot / "idem.db", schema)
                r = ok(run([str(tools.idem), "apply", "--format", "json"], sroot, idem_env(cache)),
                       "idem apply")
                res.row(W3, f"idem, {small:,} rows").runs.append(r)
        attempt(res, W3, f"idem, {small:,} rows", go)
        res.row(W3, f"idem, {n:,} rows").runs = list(res.get(W1, "idem").runs)
        shutil.rmtree(sroot, ignore_errors=True)

    if CALLGRIND and tools.idem and tools.native:
        croot = fresh_dir(DATA / "upsert-cg")

        def loader(who: str, again: bool):
            def prepare(size: int):
                link(users_csv(size), croot / "users.csv")
                db = f"{who}-{size}.db"
                if not again or not (croot / db).exists():
                    empty_db(croot / db, schema)
                if again and row_count(croot / db) != size:
                    fill = (idem_cmd(db) if who == "idem" else
                            [str(tools.native), "upsert", db, "users", "users.csv"])
                    ok(run(fill, croot, idem_env(cache)), "filling the table")
                return (idem_cmd(db) if who == "idem" else
                        [str(tools.native), "upsert", db, "users", "users.csv"]), croot, idem_env(cache)
            return prepare

        def idem_cmd(db: str) -> list[str]:
            (croot / "idem.yml").write_text(UPSERT_PLAN.format(db=db))
            return [str(tools.idem), "apply", "--format", "json"]
        per_record_ir(res, "upsert into an empty table", CALLGRIND_ROWS,
                      {"native": loader("native", False), "idem": loader("idem", False)})
        per_record_ir(res, "upsert, every row unchanged", CALLGRIND_ROWS,
                      {"native": loader("native", True), "idem": loader("idem", True)})
        shutil.rmtree(croot, ignore_errors=True)
    r1 = res.ratio(W1, "idem", "native rusqlite")
    r2 = res.ratio(W2, "idem", "native rusqlite")
    res.target(W1, "≤ 1.25× native", res.both(W1, "idem", "native rusqlite"), None if r1 is None else r1 <= 1.25)
    res.target(W2, "≤ 1.25× native, 0 changed", res.both(W2, "idem", "native rusqlite"),
               None if r2 is None else r2 <= 1.25)
    big, little = res.get(W3, f"idem, {n:,} rows"), res.get(W3, f"idem, {small:,} rows")
    if big and little and big.rss_mib and little.rss_mib:
        growth = big.rss_mib / little.rss_mib
        res.target(f"peak RSS during the {n:,}-row upsert", "≤ 64 MiB, flat in size",
                   f"{big.rss_mib:.1f} MiB ({little.rss_mib:.1f} MiB at {small:,} rows, ×{growth:.2f})",
                   big.rss_mib <= 64 and growth <= 1.10)


# --------------------------------------------------------------------------------------------
# Workload: each with checkpoints


EACH_PLAN = """steps:
  - each: users.csv
    key: id
    steps:
      - remove: "spool/{id}.lock"
"""


def bench_each(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    n = sz.each_records
    say(f"each: {n:,} records")
    root = fresh_dir(DATA / "each")
    link(users_csv(n), root / "users.csv")
    (root / "spool").mkdir()
    (root / "idem.yml").write_text(EACH_PLAN)
    W, WR = f"each over {n:,} records, checkpoints", f"each over {n:,} records, resumed (all done)"

    def native():
        r = ok(run([str(tools.native), "each", "users.csv", "."], root), "native")
        if r.out.split()[-1] != str(n):
            raise Failed(f"native reported {r.out.strip()}")
        res.row(W, "native loop, no checkpoints").runs.append(r)
        # The reference of the converged re-run too (issue 13): every path is absent, so each
        # record's `unlink` is one failed look-up, as a `stat` of each output would be.
        res.row(WR, "native loop, no checkpoints").runs.append(r)

    def python_plain():
        r = ok(run([sys.executable, str(REPO / "bench" / "classic_checkpoint.py"), "users.csv", ".",
                    str(DATA / "each-done.json"), "--no-checkpoint"], root), "python loop")
        res.row(W, "Python loop, no checkpoints").runs.append(r)
        (DATA / "each-done.json").unlink(missing_ok=True)

    def idem():
        shutil.rmtree(root / ".idem", ignore_errors=True)  # the checkpoints live there
        r = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
        c = counters(idem_report(r, "idem apply"))
        if c.get("processed") != n:
            raise Failed(f"idem reported {c}, expected processed {n}")
        r2 = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
        c2 = counters(idem_report(r2, "idem apply, resumed"))
        if c2.get("skipped") != n:
            raise Failed(f"idem's second run reported {c2}, expected skipped {n}")
        res.row(W, "idem").runs.append(r)
        res.row(WR, "idem").runs.append(r2)

    for rep in range(reps):
        if tools.native:
            attempt(res, W, "native loop, no checkpoints", native)
        if rep == 0:
            attempt(res, W, "Python loop, no checkpoints", python_plain)
        if tools.idem:
            attempt(res, W, "idem", idem)
    for who, tool, why in (("native loop, no checkpoints", tools.native, "not built"),
                           ("idem", tools.idem, "no idem binary")):
        if not tool:
            res.row(W, who).skipped = why
    for who in ("native loop, no checkpoints", "idem"):
        r = res.get(W, who)
        if r and r.runs:
            say(f"  {who}: median {r.median:.3f} s, RSS {mib(max(x.rss_kib or 0 for x in r.runs))}")
    ratio = res.ratio(W, "idem", "native loop, no checkpoints")
    res.target(W, "≤ 2× the loop without checkpoints", res.both(W, "idem", "native loop, no checkpoints"),
               None if ratio is None else ratio <= 2)
    if CALLGRIND and tools.idem and tools.native:
        def each_root(size: int) -> Path:
            croot = DATA / f"each-cg-{size}"
            if not croot.exists():
                fresh_dir(croot)
                link(users_csv(size), croot / "users.csv")
                (croot / "spool").mkdir()
                (croot / "idem.yml").write_text(EACH_PLAN)
            return croot

        def idem_first(size: int):
            croot = each_root(size)
            shutil.rmtree(croot / ".idem", ignore_errors=True)
            return [str(tools.idem), "apply", "--format", "json"], croot, idem_env(cache)

        def idem_again(size: int):
            croot = each_root(size)
            if not (croot / ".idem").exists():
                ok(run([str(tools.idem), "apply"], croot, idem_env(cache)), "idem apply")
            return [str(tools.idem), "apply", "--format", "json"], croot, idem_env(cache)

        def native_each(size: int):
            return [str(tools.native), "each", "users.csv", "."], each_root(size), None
        per_record_ir(res, "`each` with a no-op `remove`, first apply", CALLGRIND_EACH,
                      {"native loop": native_each, "idem": idem_first})
        per_record_ir(res, "`each` with a no-op `remove`, converged re-run", CALLGRIND_EACH,
                      {"native loop": native_each, "idem": idem_again})
        for size in (CALLGRIND_EACH, 2 * CALLGRIND_EACH):
            shutil.rmtree(DATA / f"each-cg-{size}", ignore_errors=True)
    ratio = res.ratio(WR, "idem", "native loop, no checkpoints")
    res.target(WR, "≤ 3× the native loop (issue 13: a converged re-run)",
               res.both(WR, "idem", "native loop, no checkpoints"), None if ratio is None else ratio <= 3)


PAGES_PLAN = """steps:
  - each: users.csv
    key: id
    steps:
      - dir: "pages/{id}"
      - file: "pages/{id}/index.txt"
        content: "{name} <{email}>\\n"
"""


def strace_counts(cmd: list[str], cwd: Path, env: dict | None, records: int) -> tuple[float, str] | None:
    """`strace -f -c` of one run: system calls per record, in total and for the calls that
    matter here (the five most frequent, and every sync)."""
    strace = shutil.which("strace")
    if not strace:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        r = run([strace, "-f", "-c", "-o", out.name, "--"] + cmd, cwd, env, rss=False)
        if r.code != 0:
            return None
        calls: dict[str, int] = {}
        for line in out.read().splitlines():
            f = line.split()
            # "% time seconds usecs/call calls [errors] syscall"
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                try:
                    calls[f[-1]] = int(f[3])
                except ValueError:
                    continue
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])
    shown = [kv for kv in top[:5]] + [kv for kv in top[5:] if "sync" in kv[0]]
    detail = ", ".join(f"{k} {v / records:.2f}" for k, v in shown)
    return total / records, detail


def callgrind_ir(cmd: list[str], cwd: Path, env: dict | None) -> int | None:
    """Instructions a run executes, counted by `valgrind --tool=callgrind` (the same whatever
    else runs on the machine); `None` without valgrind or when the run fails."""
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "callgrind.out"
        r = run([valgrind, "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={out}"] + cmd,
                cwd, env, rss=False)
        if r.code != 0 or not out.exists():
            return None
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return None


def per_record_ir(res: Results, what: str, k: int, contenders: dict) -> None:
    """Instructions per record of each contender: callgrind at `k` and `2k` records, the
    difference divided by `k`, so start-up (idem's loading of its compiled guest) is left
    out. `contenders`: name -> function(records) -> (cmd, cwd, env), which prepares a root."""
    got = {}
    for who, prepare in contenders.items():
        counts = []
        for size in (k, 2 * k):
            cmd, cwd, env = prepare(size)
            counts.append(callgrind_ir(cmd, cwd, env))
        if None not in counts:
            got[who] = (counts[1] - counts[0]) / k
    if not got:
        return
    ref = next(iter(got.values()))
    parts = [f"{who} {ir:,.0f}" + ("" if ir is ref else f" ({ir / ref:.2f}×)") for who, ir in got.items()]
    res.notes.append(f"instructions per record, {what} (callgrind, {k:,} and {2 * k:,} records): "
                     + ", ".join(parts))


def bench_pages(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    """Issue 20's real `each`: a directory and a small file per record, made durable, against a
    Python loop with the same durability; then the converged re-run against a native loop
    that stats each output."""
    n = sz.pages_records
    say(f"pages: each over {n:,} records writing a directory and a file each")
    root = fresh_dir(DATA / "pages")
    link(users_csv(n), root / "users.csv")
    (root / "idem.yml").write_text(PAGES_PLAN)
    W = f"each over {n:,} records writing a file each, apply"
    WR = f"each over {n:,} records writing a file each, converged re-run"
    PY, NAT = "Python loop, fsync per file and dir", "native loop, lstat each output"
    reps = min(reps, 3)

    def clean() -> None:
        shutil.rmtree(root / "pages", ignore_errors=True)
        shutil.rmtree(root / ".idem", ignore_errors=True)

    def python_ref():
        clean()
        r = ok(run([sys.executable, str(REPO / "bench" / "durable_pages.py"), "users.csv", "."], root),
               "python loop")
        if r.out.split()[-1] != str(n):
            raise Failed(f"the Python loop reported {r.out.strip()}")
        res.row(W, PY).runs.append(r)

    def idem():
        clean()
        r = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
        c = counters(idem_report(r, "idem apply"))
        if c.get("processed") != n:
            raise Failed(f"idem reported {c}, expected processed {n}")
        page = (root / "pages" / "7" / "index.txt").read_text()
        if not page.endswith(">\n") or "@example.org" not in page:
            raise Failed(f"pages/7/index.txt holds {page!r}")
        res.row(W, "idem").runs.append(r)
        for _ in range(2):  # the re-run and its reference, interleaved, twice
            if tools.native:
                rn = ok(run([str(tools.native), "stat-pages", "users.csv", "."], root), "native")
                if rn.out.split()[1] != str(2 * n):
                    raise Failed(f"native reported {rn.out.strip()}")
                res.row(WR, NAT).runs.append(rn)
            r2 = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
            c2 = counters(idem_report(r2, "idem apply, converged"))
            if c2.get("skipped") != n:
                raise Failed(f"idem's re-run reported {c2}, expected skipped {n}")
            res.row(WR, "idem").runs.append(r2)

    for rep in range(reps):
        if rep < max(1, sz.slow_reps):
            attempt(res, W, PY, python_ref)
        if tools.idem:
            attempt(res, W, "idem", idem)
        else:
            res.row(W, "idem").skipped = "no idem binary"
    # System calls per record, on a prefix of the data (strace slows every call alike).
    k = min(n, STRACE_RECORDS)
    sroot = fresh_dir(DATA / "pages-strace")
    link(users_csv(k), sroot / "users.csv")
    (sroot / "idem.yml").write_text(PAGES_PLAN)
    traced = {}
    if tools.idem:
        traced["idem apply"] = strace_counts([str(tools.idem), "apply", "--format", "json"], sroot,
                                             idem_env(cache), k)
        traced["idem re-run"] = strace_counts([str(tools.idem), "apply", "--format", "json"], sroot,
                                              idem_env(cache), k)
    shutil.rmtree(sroot / "pages", ignore_errors=True)
    traced["Python loop"] = strace_counts([sys.executable, str(REPO / "bench" / "durable_pages.py"),
                                           "users.csv", "."], sroot, None, k)
    if tools.native:
        traced["native stat loop"] = strace_counts([str(tools.native), "stat-pages", "users.csv", "."],
                                                   sroot, None, k)
    if CALLGRIND and tools.idem and tools.native:
        def converged(size: int):
            croot = DATA / f"pages-cg-{size}"
            if not (croot / ".idem").exists():
                fresh_dir(croot)
                link(users_csv(size), croot / "users.csv")
                (croot / "idem.yml").write_text(PAGES_PLAN)
                ok(run([str(tools.idem), "apply"], croot, idem_env(cache)), "idem apply")
            return [str(tools.idem), "apply", "--format", "json"], croot, idem_env(cache)

        def native_stat(size: int):
            _, croot, _ = converged(size)
            return [str(tools.native), "stat-pages", "users.csv", "."], croot, None
        per_record_ir(res, "converged re-run of the pages `each`", CALLGRIND_PAGES,
                      {"native stat loop": native_stat, "idem": converged})
        for size in (CALLGRIND_PAGES, 2 * CALLGRIND_PAGES):
            shutil.rmtree(DATA / f"pages-cg-{size}", ignore_errors=True)
    shutil.rmtree(sroot, ignore_errors=True)
    for who, t in traced.items():
        if t:
            res.notes.append(f"system calls per record, {who} ({k:,} records, `strace -f -c`): "
                             f"{t[0]:.1f} ({t[1]})")
    clean()
    for w in (W, WR):
        for r in res.rows:
            if r.workload == w and r.runs:
                say(f"  {w}: {r.contender}: median {fmt_time(r.median)}")
    py, ours = res.get(W, PY), res.get(W, "idem")
    if py and ours and py.median and ours.median:
        speed = py.median / ours.median
        res.target(W, "≥ 2× the throughput of the Python loop (same durability)",
                   f"{speed:.2f}× its throughput ({res.both(W, 'idem', PY)} of its time)", speed >= 2)
    else:
        res.target(W, "≥ 2× the throughput of the Python loop (same durability)", "n/a", None)
    ratio = res.ratio(WR, "idem", NAT)
    res.target(WR, "≤ 3× the native stat loop", res.both(WR, "idem", NAT),
               None if ratio is None else ratio <= 3)


def bench_classic(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    """The quadratic pattern idem's checkpoints replace, at sizes it can still finish."""
    say(f"classic checkpoint pattern: {', '.join(f'{k:,}' for k in sz.classic_sizes)} records")
    root = fresh_dir(DATA / "classic")
    (root / "spool").mkdir()
    (root / "idem.yml").write_text(EACH_PLAN)
    for k in sz.classic_sizes:
        link(users_csv(k), root / "users.csv")
        W = f"each over {k:,} records, checkpoints"
        for rep in range(sz.slow_reps):
            done = root / "done.json"
            done.unlink(missing_ok=True)

            def classic():
                r = ok(run([sys.executable, str(REPO / "bench" / "classic_checkpoint.py"), "users.csv", ".",
                            str(done)], root), "classic pattern")
                res.row(W, "Python, JSON list rewritten per record").runs.append(r)
                say(f"  {k:,} records: {r.wall:.2f} s")
            attempt(res, W, "Python, JSON list rewritten per record", classic)
        if tools.idem:
            def idem():
                for rep in range(reps):
                    shutil.rmtree(root / ".idem", ignore_errors=True)
                    r = run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache))
                    if counters(idem_report(r, "idem apply")).get("processed") != k:
                        raise Failed("idem did not process every record")
                    res.row(W, "idem").runs.append(r)
            attempt(res, W, "idem", idem)


# --------------------------------------------------------------------------------------------
# Workload: cleanup


def bench_cleanup(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    dirs, per = sz.cleanup_dirs, sz.cleanup_files_per_dir
    total = dirs * per
    say(f"cleanup: {total:,} files in {dirs:,} directories, half older than 30 days")
    root = DATA / f"cleanup-{dirs}x{per}"
    tree = root / "tree"
    now = int(time.time())
    old, new = now - 60 * DAY, now - DAY  # well clear of 30 days on both sides, for find too
    paths = [(tree / f"d{d:04}" / f"f{f:03}.log", f % 2 == 1) for d in range(dirs) for f in range(per)]
    body = b"x" * 100

    def restore(all_times: bool) -> None:
        """Put back the old files a cleanup deleted (and, once, stamp every file's time)."""
        for p, is_old in paths:
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(body)
            elif not (all_times or is_old):
                continue
            t = old if is_old else new
            os.utime(p, (t, t))

    def count() -> int:
        return sum(len(fs) for _, _, fs in os.walk(tree))

    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / ".idem", ignore_errors=True)
    restore(all_times=True)
    if count() != total:
        raise SystemExit(f"bench: {tree} holds stray files; remove {root} and run again")
    (root / "idem.yml").write_text("steps:\n  - cleanup: tree\n    older-than: 30d\n")
    WA, WD = f"cleanup {total:,} files, apply", f"cleanup {total:,} files, dry run"
    find_delete = [tools.find, "tree", "-type", "f", "-mtime", "+30", "-delete"]
    find_print = [tools.find, "tree", "-type", "f", "-mtime", "+30", "-print"]
    env = idem_env(cache, now)
    if tools.find:
        run(find_print, root)  # warm the page cache for everyone

    def find_apply():
        restore(False)
        r = ok(run(find_delete, root), "find -delete")
        if count() != total // 2:
            raise Failed(f"find left {count():,} files, expected {total // 2:,}")
        res.row(WA, "find -mtime +30 -delete").runs.append(r)

    def idem_apply():
        restore(False)
        r = run([str(tools.idem), "apply", "--format", "json"], root, env)
        idem_report(r, "idem apply")
        if count() != total // 2:
            raise Failed(f"idem left {count():,} files, expected {total // 2:,}")
        res.row(WA, "idem").runs.append(r)

    def find_dry():
        restore(False)
        r = ok(run(find_print, root), "find -print")
        if len(r.out.splitlines()) != total // 2:
            raise Failed("find -print listed the wrong number of files")
        res.row(WD, "find -mtime +30 -print").runs.append(r)

    def idem_dry():
        r = run([str(tools.idem), "plan", "--format", "json"], root, env)
        report = idem_report(r, "idem plan")
        removed = sum(1 for s in report["steps"] for c in s.get("changes", []) if c.get("kind") == "remove-file")
        if removed != total // 2 or count() != total:
            raise Failed(f"idem plan reported {removed:,} removals, expected {total // 2:,}")
        res.row(WD, "idem").runs.append(r)

    for rep in range(reps):
        if tools.find:
            attempt(res, WA, "find -mtime +30 -delete", find_apply)
        if tools.idem:
            attempt(res, WA, "idem", idem_apply)
        if tools.find:
            attempt(res, WD, "find -mtime +30 -print", find_dry)
        if tools.idem:
            attempt(res, WD, "idem", idem_dry)
    restore(False)
    for w in (WA, WD):
        for r in res.rows:
            if r.workload == w and r.runs:
                say(f"  {w}: {r.contender}: median {r.median:.3f} s")
    ra = res.ratio(WA, "idem", "find -mtime +30 -delete")
    rd = res.ratio(WD, "idem", "find -mtime +30 -print")
    res.target(WA, "≤ 1.5× find -delete", res.both(WA, "idem", "find -mtime +30 -delete"),
               None if ra is None else ra <= 1.5)
    res.target(WD, "≤ 1.2× find -print", res.both(WD, "idem", "find -mtime +30 -print"),
               None if rd is None else rd <= 1.2)


# --------------------------------------------------------------------------------------------
# Workload: start-up on a converged plan


STARTUP_DIRS = ["etc", "build/out", "logs/app", "var/run", "var/cache"]
STARTUP_FILES = [("etc/app.conf", "port = 8080\nworkers = 4\n"),
                 ("etc/db.conf", "url = sqlite:data/app.db\n"),
                 ("etc/cache.conf", "size = 64M\n"),
                 ("etc/log.conf", "level = info\n"),
                 ("build/out/VERSION", "1.2.3\n")]


def bench_startup(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    say(f"start-up: a converged 10-step plan, {sz.startup_runs} runs warm, {sz.startup_cold_runs} cold")
    base = fresh_dir(DATA / "startup")
    root = base / "root"
    root.mkdir()
    plan = ["steps:"] + [f"  - dir: {d}" for d in STARTUP_DIRS]
    for path, content in STARTUP_FILES:
        plan += [f"  - file: {path}", f"    content: {json.dumps(content)}"]
    (root / "idem.yml").write_text("\n".join(plan) + "\n")
    script = ["#!/usr/bin/env bash", "# What idem's 10-step start-up plan does, as a careful shell script.",
              "set -eu", 'cd "$1"', "put() { printf '%s' \"$2\" | cmp -s - \"$1\" || printf '%s' \"$2\" > \"$1\"; }"]
    script += [f"mkdir -p {d}" for d in STARTUP_DIRS]
    script += [f"put {p} $'{c.replace(chr(10), chr(92) + 'n')}'" for p, c in STARTUP_FILES]
    (base / "converge.sh").write_text("\n".join(script) + "\n")
    W = "start: apply a converged 10-step plan"
    if tools.bash:
        ok(run([tools.bash, str(base / "converge.sh"), str(root)], base), "bash script")
    if tools.idem:
        # Converge (and check that a second run is really unchanged) with a warm cache.
        try:
            ok(run([str(tools.idem), "apply"], root, idem_env(cache)), "idem apply")
            rep = idem_report(run([str(tools.idem), "apply", "--format", "json"], root, idem_env(cache)), "idem")
            if rep.get("changed"):
                raise Failed("the second apply changed something")
        except Failed as e:
            res.row(W, "idem, warm cache").skipped = f"failed: {e}"
            tools = Tools(**{**tools.__dict__, "idem": None})
    cold_dir = DATA / "startup-cache-cold"

    def bash_run():
        res.row(W, "bash: mkdir -p, cmp").runs.append(
            ok(run([tools.bash, str(base / "converge.sh"), str(root)], base, rss=False), "bash"))

    def idem_warm():
        res.row(W, "idem, warm cache").runs.append(
            ok(run([str(tools.idem), "apply"], root, idem_env(cache), rss=False), "idem"))

    def idem_cold():
        fresh_dir(cold_dir)
        res.row(W, "idem, empty cache dir").runs.append(
            ok(run([str(tools.idem), "apply"], root, idem_env(cold_dir), rss=False), "idem"))

    def idem_nocache():
        res.row(W, "idem --no-cache").runs.append(
            ok(run([str(tools.idem), "apply", "--no-cache"], root, idem_env(None), rss=False), "idem"))

    for i in range(sz.startup_runs):
        if tools.bash:
            attempt(res, W, "bash: mkdir -p, cmp", bash_run)
        if tools.idem:
            attempt(res, W, "idem, warm cache", idem_warm)
    for i in range(sz.startup_cold_runs):
        if tools.idem:
            attempt(res, W, "idem, empty cache dir", idem_cold)
            attempt(res, W, "idem --no-cache", idem_nocache)
    # The peak RSS of each, from one more run under GNU time (not among the timed runs).
    peaks = {"bash: mkdir -p, cmp": ([tools.bash, str(base / "converge.sh"), str(root)], base, None),
             "idem, warm cache": ([str(tools.idem), "apply"], root, idem_env(cache)),
             "idem, empty cache dir": ([str(tools.idem), "apply"], root, idem_env(fresh_dir(cold_dir))),
             "idem --no-cache": ([str(tools.idem), "apply", "--no-cache"], root, idem_env(None))}
    for who, (cmd, cwd, env) in peaks.items():
        row = res.get(W, who)
        if row and row.runs:
            r = run(cmd, cwd, env)
            if r.code == 0:
                row.runs[0].rss_kib = r.rss_kib
    shutil.rmtree(cold_dir, ignore_errors=True)
    for r in res.rows:
        if r.workload == W and r.runs:
            say(f"  {r.contender}: median {r.median * 1000:.1f} ms")
    warm = res.get(W, "idem, warm cache")
    ratio = res.ratio(W, "idem, warm cache", "bash: mkdir -p, cmp")
    if warm and warm.runs:
        ms = warm.median * 1000
        res.target(W, "≤ 10 ms median, ≤ 3× bash",
                   f"{ms:.1f} ms, {res.both(W, 'idem, warm cache', 'bash: mkdir -p, cmp')}",
                   ms <= 10 and (ratio is None or ratio <= 3))
    else:
        res.target(W, "≤ 10 ms median, ≤ 3× bash", "n/a", None)


# --------------------------------------------------------------------------------------------
# Report


# --------------------------------------------------------------------------------------------
# Workloads: PostgreSQL (issue 15). Self-contained: their own server, data, plans and ratios.


class PgServer:
    """A throwaway cluster started by tests/pg.sh for this process, stopped when it exits."""

    def __init__(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="idem-bench-pg-")) / "cluster"
        r = run(["bash", str(REPO / "tests" / "pg.sh"), "start", str(base), str(os.getpid())],
                REPO, rss=False)
        if r.code != 0:
            raise Failed(f"tests/pg.sh could not start a server: {r.err.strip()[-400:]}")
        env = dict(l.split("=", 1) for l in (base / "env").read_text().splitlines() if "=" in l)
        self.port, self.socket, self.password = env["PG_PORT"], env["PG_SOCKET"], env["PG_PASSWORD"]
        self.psql = shutil.which("psql") or "psql"

    def url(self, db: str) -> str:
        return f"postgresql://idem:{self.password}@127.0.0.1:{self.port}/{db}"

    def sql(self, db: str, sql: str) -> str:
        r = run([self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.socket,
                 "-p", self.port, "-U", "idem", "-d", db, "-c", sql], REPO, rss=False)
        ok(r, f"psql -c {sql[:60]!r}")
        return r.out.strip()

    def psql_file(self, db: str, script: Path, cwd: Path) -> Run:
        """Run a psql script over the socket, as a user's shell loop would; timed like idem."""
        return run([self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket, "-p",
                    self.port, "-U", "idem", "-d", db, "-f", str(script)], cwd)


_PG: PgServer | None = None


def pg_server() -> PgServer:
    global _PG
    if _PG is None:
        _PG = PgServer()
    return _PG


PG_UPSERT_PLAN = """steps:
  - upsert: env:BENCH_PG
    table: users
    key: id
    from: users.csv
"""

PG_TABLE = "CREATE TABLE users (id bigint PRIMARY KEY, name text, email text)"

PSQL_COPY_SCRIPT = r"""BEGIN;
CREATE TEMP TABLE stage (LIKE users) ON COMMIT DROP;
\copy stage FROM 'users.csv' WITH (FORMAT csv, HEADER true)
INSERT INTO users AS t SELECT * FROM stage
  ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email
  WHERE (t.name, t.email) IS DISTINCT FROM (excluded.name, excluded.email);
COMMIT;
"""


def pg_row_loop_script(csv: Path, out: Path) -> Path:
    """One `INSERT … ON CONFLICT` statement per row, each its own transaction: the loop a
    shell script over `psql` amounts to (but in one psql session, so no connection per row)."""
    if out.exists() and out.stat().st_mtime >= csv.stat().st_mtime:
        return out
    import csv as csvmod
    tmp = out.with_suffix(".tmp")
    with open(csv, newline="") as f, open(tmp, "w") as w:
        rows = csvmod.reader(f)
        next(rows)
        for i, name, email in rows:
            q = lambda v: "'" + v.replace("'", "''") + "'"
            w.write(f"INSERT INTO users AS t VALUES ({i}, {q(name)}, {q(email)}) ON CONFLICT (id) DO UPDATE "
                    "SET name = excluded.name, email = excluded.email "
                    "WHERE (t.name, t.email) IS DISTINCT FROM (excluded.name, excluded.email);\n")
    tmp.rename(out)
    return out


def bench_pg_upsert(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    """`upsert` of N rows into PostgreSQL against `psql \\copy` into a temporary table plus
    the same `INSERT … ON CONFLICT`, and against a per-row INSERT loop; fresh and unchanged."""
    n = sz.upsert_rows
    say(f"pg-upsert: {n:,} rows into PostgreSQL")
    W1, W2 = f"pg upsert {n:,} rows, empty table", f"pg upsert {n:,} rows again, unchanged"
    if not tools.idem:
        for w in (W1, W2):
            res.row(w, "idem").skipped = "no idem binary"
        return
    try:
        pg = pg_server()
    except Failed as e:
        for w in (W1, W2):
            res.row(w, "idem").skipped = str(e)
        return
    csv = users_csv(n)
    root = fresh_dir(DATA / "pg-upsert")
    link(csv, root / "users.csv")
    (root / "idem.yml").write_text(PG_UPSERT_PLAN)
    (root / "copy.sql").write_text(PSQL_COPY_SCRIPT)
    loop = pg_row_loop_script(csv, DATA / f"users-{n}-s{SEED}.inserts.sql")
    db = "bench_upsert"
    pg.sql("postgres", f"DROP DATABASE IF EXISTS {db}")
    pg.sql("postgres", f"CREATE DATABASE {db}")
    pg.sql(db, PG_TABLE)
    env = idem_env(cache)
    env["BENCH_PG"] = pg.url(db)

    def count() -> int:
        return int(pg.sql(db, "SELECT count(*) FROM users"))

    def idem_load(expect: str) -> Run:
        r = run([str(tools.idem), "apply", "--format", "json"], root, env)
        c = counters(idem_report(r, "idem apply"))
        want = {"inserted": n} if expect == "fresh" else {"unchanged": n}
        if any(c.get(k, 0) != v for k, v in want.items()):
            raise Failed(f"idem reported {c}, expected {want}")
        return r

    contenders = [
        ("psql \\copy + INSERT … ON CONFLICT", lambda _e: ok(pg.psql_file(db, root / "copy.sql", root), "psql \\copy")),
        ("idem", idem_load),
    ]

    def once(name, fn):
        def go():
            pg.sql(db, "TRUNCATE users")
            pg.sql(db, "VACUUM ANALYZE users")
            r1 = fn("fresh")
            if (got := count()) != n:
                raise Failed(f"{got:,} rows after the load, expected {n:,}")
            r2 = fn("again")
            res.row(W1, name).runs.append(r1)
            res.row(W2, name).runs.append(r2)
            say(f"  {name}: {r1.wall:.3f} s, again {r2.wall:.3f} s, RSS {mib(r1.rss_kib)}")
        attempt(res, W1, name, go)

    for _ in range(reps):
        for name, fn in contenders:
            once(name, fn)
    for _ in range(sz.slow_reps):
        once("psql, one INSERT … ON CONFLICT per row", lambda _e: ok(pg.psql_file(db, loop, root), "psql loop"))
    copy = "psql \\copy + INSERT … ON CONFLICT"
    for w, bar in ((W1, "≤ 1.3× psql \\copy"), (W2, "≤ 1.3× psql \\copy, 0 changed")):
        r = res.ratio(w, "idem", copy)
        res.target(w, bar, res.both(w, "idem", copy), None if r is None else r <= 1.3)
    pg.sql("postgres", f"DROP DATABASE IF EXISTS {db}")


PG_COOP_PLAN = """steps:
  - each: users.csv
    key: id
    id: coop
    steps:
      - upsert: env:BENCH_PG
        table: coop
        key: id
        rows: [{id: "{id}", name: "{name}", email: "{email}"}]
"""


def bench_pg_coop(res: Results, tools: Tools, sz: Sizes, cache: Path, reps: int) -> None:
    """4 cooperating runners against one over N records whose sub-step upserts a row into
    PostgreSQL, with the state in that database (so each mark commits with its row)."""
    # The 100,000 records in full mode; 2,000 in quick mode (CI, debug builds).
    n = 100_000 if sz is FULL else sz.each_records // 25
    say(f"pg-coop: {n:,} records, 1 runner against 4 cooperating")
    W = f"pg each over {n:,} records, state in PostgreSQL"
    if not tools.idem:
        res.row(W, "idem, 1 runner").skipped = "no idem binary"
        return
    try:
        pg = pg_server()
    except Failed as e:
        res.row(W, "idem, 1 runner").skipped = str(e)
        return
    csv = users_csv(n)
    db = "bench_coop"
    pg.sql("postgres", f"DROP DATABASE IF EXISTS {db}")
    pg.sql("postgres", f"CREATE DATABASE {db}")
    pg.sql(db, "CREATE TABLE coop (id bigint PRIMARY KEY, name text, email text)")
    roots = []
    for i in range(4):
        root = fresh_dir(DATA / f"pg-coop-{i}")
        link(csv, root / "users.csv")
        (root / "idem.yml").write_text(PG_COOP_PLAN)
        roots.append(root)
    env = idem_env(cache)
    env["BENCH_PG"] = pg.url(db)
    url = pg.url(db)
    key_n = [0]

    def runners(count: int) -> Run:
        pg.sql(db, "TRUNCATE coop")
        key_n[0] += 1
        key = f"bench-{key_n[0]}"
        args = ["apply", "--format", "json", "--state", url, "--state-key", key]
        if count > 1:
            args.append("--cooperate")
        outs = [tempfile.TemporaryFile() for _ in range(count)]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([str(tools.idem)] + args, cwd=roots[i], env=env, stdout=outs[i],
                                  stderr=subprocess.STDOUT) for i in range(count)]
        cpu, codes = 0.0, []
        for p in procs:
            _, status, ru = os.wait4(p.pid, 0)
            cpu += ru.ru_utime + ru.ru_stime
            codes.append(os.waitstatus_to_exitcode(status))
        wall = time.perf_counter() - t0
        texts = []
        for f in outs:
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        if any(codes):
            raise Failed(f"a runner exited {codes}: {texts[codes.index(next(c for c in codes if c))][-400:]}")
        done = sum(counters(json.loads(t)).get("processed", 0) for t in texts)
        if done != n or (got := int(pg.sql(db, "SELECT count(*) FROM coop"))) != n:
            raise Failed(f"processed {done:,}, table holds {pg.sql(db, 'SELECT count(*) FROM coop')}, expected {n:,}")
        return Run(wall, cpu, None, 0, "\n".join(texts), "")

    for _ in range(reps):
        for name, count in (("idem, 1 runner", 1), ("idem, 4 cooperating runners", 4)):
            def go(count=count, name=name):
                r = runners(count)
                res.row(W, name).runs.append(r)
                say(f"  {name}: {r.wall:.2f} s ({n / r.wall:,.0f} records/s), CPU {r.cpu:.2f} s")
            attempt(res, W, name, go)
    one, four = res.get(W, "idem, 1 runner"), res.get(W, "idem, 4 cooperating runners")
    if one and four and one.median and four.median:
        speedup = one.median / four.median
        res.target(f"{W}: throughput of 4 runners over 1", "≥ 1.8×", f"{speedup:.2f}×", speedup >= 1.8)
    pg.sql("postgres", f"DROP DATABASE IF EXISTS {db}")


def mib(kib: int | None) -> str:
    return "—" if not kib else f"{kib / 1024:.1f} MiB"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}×"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


REFERENCES = {  # the contender each workload's ratios are taken against
    "upsert": "native rusqlite", "each over": "native loop, no checkpoints",
    "cleanup": "find", "start": "bash: mkdir -p, cmp", "peak RSS": None,
}
REFERENCES.update({"pg upsert": "psql \\copy", "pg each over": "idem, 1 runner"})  # issue 15


# Workloads whose reference is not the one their prefix names.
REFERENCES_BY_PART = {"writing a file each, apply": "Python loop, fsync",
                      "writing a file each, converged": "native loop, lstat"}


def reference_of(res: Results, workload: str) -> Row | None:
    refs = [ref for part, ref in REFERENCES_BY_PART.items() if part in workload]
    refs = refs or [ref for prefix, ref in REFERENCES.items() if workload.startswith(prefix)]
    for ref in refs:
        if ref:
            for r in res.rows:
                if r.workload == workload and r.contender.startswith(ref) and r.runs:
                    return r
    return None


def render(res: Results, sz: Sizes, mode: str, wall: float) -> str:
    out = [f"idem benchmarks, {mode} mode ({sz.reps} reps, median wall time; finished in {wall:.0f} s)", "",
           "| workload | contender | median | vs reference | CPU (median) | CPU vs reference | peak RSS | runs |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res.rows:
        if r.skipped and not r.runs:
            out.append(f"| {r.workload} | {r.contender} | skipped: {r.skipped} | | | | | |")
            continue
        ref = reference_of(res, r.workload)
        ratio = "ref" if ref is r else (fmt_ratio(r.median / ref.median) if ref and ref.median else "")
        cpu_ratio = "ref" if ref is r else (fmt_ratio(r.cpu / ref.cpu) if ref and ref.cpu else "")
        cpu = r.cpu
        rss = "—" if r.rss_mib is None else f"{r.rss_mib:.1f} MiB"
        out.append(f"| {r.workload} | {r.contender} | {fmt_time(r.median)} | {ratio} | {fmt_time(cpu)} | "
                   f"{cpu_ratio} | {rss} | {len(r.runs)} |" + (f" {r.skipped}" if r.skipped else ""))
    out += ["", "Targets are judged on wall-time ratios; the CPU ratio (user + system of the child) is",
            "steadier when other work shares the machine.", "",
            "| target | bar | measured | met |", "|---|---|---|---|"]
    for what, bar, measured, met in res.targets:
        out.append(f"| {what} | {bar} | {measured} | {'—' if met is None else 'yes' if met else 'NO'} |")
    if res.notes:
        out += [""] + [f"- {n}" for n in res.notes]
    return "\n".join(out)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} CPUs, {cpu}, {mem / 2**20:.1f} GiB RAM, {platform.system()} {platform.release()}"


WORKLOADS = {"upsert": bench_upsert, "each": bench_each, "pages": bench_pages, "classic": bench_classic,
             "cleanup": bench_cleanup, "startup": bench_startup}
WORKLOADS.update({"pg-upsert": bench_pg_upsert, "pg-coop": bench_pg_coop})  # issue 15


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    m = ap.add_mutually_exclusive_group()
    m.add_argument("--quick", action="store_true", help="small sizes, for CI (the default)")
    m.add_argument("--full", action="store_true", help="the issue's sizes, for the README figures")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--reps", type=int, help="repetitions of each measurement")
    ap.add_argument("--idem", help="the idem binary [default: target/release/idem]")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--callgrind", action="store_true",
                    help="also count instructions per record with valgrind's callgrind (slow)")
    ap.add_argument("--pages-records", type=int, help="records of the `pages` workload "
                    "(100,000 in full mode; the Python reference takes 2-10 ms a record)")
    a = ap.parse_args()
    mode = "full" if a.full else "quick"
    sz = FULL if a.full else QUICK
    if a.pages_records:
        sz = Sizes(**{**sz.__dict__, "pages_records": a.pages_records})
    global CALLGRIND
    CALLGRIND = a.callgrind
    reps = a.reps or sz.reps
    only = [w.strip() for w in a.only.split(",") if w.strip()]
    if unknown := [w for w in only if w not in WORKLOADS]:
        ap.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")

    tools = Tools.discover(a.idem)
    for name, have, how in (("idem", tools.idem, "cargo build --release -p idem"),
                            ("native reference", tools.native, "bench/setup.sh"),
                            ("sqlite3 shell", tools.sqlite3, "apt-get install sqlite3"),
                            ("sqlite-utils", tools.sqlite_utils, "bench/setup.sh"),
                            ("find", tools.find, "findutils")):
        if not have:
            say(f"bench: SKIPPING {name}: not found ({how})")
    say(f"bench: {mode} mode on {machine()}")
    DATA.mkdir(parents=True, exist_ok=True)
    cache = DATA / "cache"  # idem's compiled-component cache for every run but the cold ones
    if tools.idem:
        run([str(tools.idem), "schema"], DATA, idem_env(cache))  # fills the cache
    res = Results()
    t0 = time.perf_counter()
    for w in only:
        WORKLOADS[w](res, tools, sz, cache, reps)
    table = render(res, sz, mode, time.perf_counter() - t0)
    header = f"machine: {machine()}\nidem: {tools.idem}\ncommand: {' '.join(['bench/run.sh'] + sys.argv[1:])}\n"
    print(header + "\n" + table)
    (DATA / f"results-{mode}.md").write_text(header + "\n" + table + "\n")
    if a.json:
        a.json.write_text(json.dumps({
            "mode": mode, "machine": machine(),
            "rows": [{"workload": r.workload, "contender": r.contender, "median_s": r.median,
                      "walls_s": [x.wall for x in r.runs], "cpu_s": [x.cpu for x in r.runs],
                      "peak_rss_mib": r.rss_mib, "skipped": r.skipped} for r in res.rows],
            "targets": [{"what": w, "bar": b, "measured": m, "met": t} for w, b, m, t in res.targets],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
