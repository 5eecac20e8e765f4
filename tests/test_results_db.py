"""The results database, the same suite on SQLite and on a real PostgreSQL server the
tests start themselves (tests/resultsdb.py): runs stored whole and once, an old schema
upgraded in place, a newer one refused, concurrent writers (two pytest processes; a matrix
cell beside a bench) losing nothing, a run whose database is unreachable, locked or
deleted passing or failing on its own, the importers, `roslab history`, and the matrix
report's previous nightly. No guest boots: runs are made of real files and fake machines."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from resultsdb import new_database, postgres_server
from sqlalchemy import text
from test_matrix_report import BOOT, case_xml, junit, make_cell  # tests/ is on sys.path
from test_reports_bench import Factory, options, quiet

from commands.cli import main
from reports import history
from reports.bench import run_bench
from reports.results_db import (
    BootData,
    ResultsDB,
    ResultsDBError,
    RunData,
    TestData,
    _engine,
    record,
    upgrade,
)
from reports.results_record import run_from_cell

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results' / 'roslab.db'}"
    return new_database(request.getfixturevalue("pg_admin"))


def a_run(uid: str, started: datetime, outcomes: dict[str, str], *, version: str = "v1",
          commit: str = "c1", cell: str = "qemu-x86", user_docker: float = 30.0,
          reruns: dict[str, str] | None = None, evidence: str | None = None) -> RunData:
    tests = [TestData(n, o, 1.5, cause="AssertionError: boom" if o == "failed" else None,
                      evidence=evidence if o == "failed" else None)
             for n, o in outcomes.items()]
    tests += [TestData(n, o, 1.0, attempt=1) for n, o in (reruns or {}).items()]
    return RunData(uid=uid, lab_run_id=uid, kind="cell", started=started,
                   git_commit=commit, image_version=version, image_checksum=f"sha256:{version}",
                   platform="qemu", arch="x86_64", board="pc", accel="tcg", cell=cell,
                   host="lab1", tests=tests,
                   boots=[BootData(1, True, {"kernel": 0.5, "ssh": user_docker - 4,
                                             "user-docker": user_docker},
                                   {"udev": {"created": 1.0, "started": 1.2}}, machine="m1")])


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- storing -------------------------------------------------------------------------------


def test_a_run_is_stored_whole_and_once(db_url: str) -> None:
    now = datetime(2025, 6, 1, 2, 0)
    with ResultsDB(db_url) as db:
        run_id = db.add(a_run("n1", now, {"t::a": "passed", "t::b": "failed"},
                              evidence="/x/console.log"))
        assert run_id is not None
        assert db.add(a_run("n1", now, {})) is None  # the same uid: an import made twice
        (run,) = db.runs()
    assert (run.id, run.kind, run.cell, run.git_commit, run.image_version, run.board) == \
        (run_id, "cell", "qemu-x86", "c1", "v1", "pc")
    assert run.started == now
    assert {(t.nodeid, t.outcome, t.cause, t.evidence) for t in run.tests} == {
        ("t::a", "passed", None, None), ("t::b", "failed", "AssertionError: boom",
                                         "/x/console.log")}
    (boot,) = run.boots
    assert {m.name: m.seconds for m in boot.milestones} == \
        {"kernel": 0.5, "ssh": 26.0, "user-docker": 30.0}
    assert [(s.service, s.created, s.started, s.finished) for s in boot.services] == \
        [("udev", 1.0, 1.2, None)]


def test_an_old_schema_is_upgraded_in_place(db_url: str) -> None:
    engine = _engine(db_url)
    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    assert upgrade(engine, "0001") == (None, "0001")  # what roslab's first schema made
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (uid, lab_run_id, kind, source, started, interrupted) "
            "VALUES ('old', 'old', 'bench', 'live', '2025-01-01 00:00:00', false)"))
    engine.dispose()
    said: list[str] = []
    with ResultsDB(db_url, say=said.append) as db:
        assert len(said) == 1 and "schema upgraded in place from 0001 to 0002" in said[0]
        db.add(RunData(uid="new", lab_run_id="new", kind="bench", started=datetime.now(),
                       hw="vmware", image_checksum="sha256:x",
                       boots=[BootData(1, True, {"ssh": 3.0}, {"udev": {"started": 1.0}})]))
        old, new = sorted(db.runs(), key=lambda r: r.uid != "old")
    assert (old.uid, old.hw, old.image_checksum) == ("old", None, None)  # kept, columns added
    assert (new.hw, new.boots[0].services[0].service) == ("vmware", "udev")
    said.clear()
    ResultsDB(db_url, say=said.append).close()
    assert said == []  # at the head: nothing to do


def test_a_newer_schema_is_refused_and_a_run_says_it_was_not_recorded(db_url: str) -> None:
    ResultsDB(db_url).close()
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(ResultsDBError, match="revision 0099, which this roslab does not know"):
        ResultsDB(db_url)
    said: list[str] = []
    assert record(db_url, a_run("r", datetime.now(), {}), said.append) is None
    assert said[0].startswith("WARNING: could not record this run")


# -- several writers at once ---------------------------------------------------------------

CONFTEST = """
import pytest
import reports.plugin
from reports.fake import FakeMachine

@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    m = FakeMachine("qemu", "/images/ref", "x86_64", workdir=tmp_path_factory.mktemp("m1"))
    with m:
        m.boot(timeout=10)
        yield m

reports.plugin.machines_of = lambda item: [
    v for v in getattr(item, "funcargs", {}).values() if isinstance(v, FakeMachine)
]
"""

SCENARIO = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_boots(machine, n):
    assert machine.timeline.marks

def test_breaks(machine):
    assert machine.info["arch"] == "aarch64"
"""


def child_pytest(folder: Path, *args: str, tests: int = 3,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "test_scenario.py").write_text(textwrap.dedent(SCENARIO.format(tests=tests)))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "reports.plugin", "-q", "-p",
         "no:cacheprovider", "test_scenario.py", *args],
        cwd=folder, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
             "PYTHONPATH": str(ROOT), **(env or {})})


def test_two_pytest_processes_record_at_once(db_url: str, tmp_path: Path) -> None:
    procs = [child_pytest(tmp_path / f"run{i}", f"--results-db={db_url}", tests=40)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 1, out  # test_breaks fails on purpose, recorded or not
        assert "roslab: recorded scenarios run" in out, out
    with ResultsDB(db_url, create=False) as db:
        runs = db.runs()
    assert len(runs) == 2
    for run in runs:
        assert len(run.tests) == 41 and len(run.boots) == 1
        (failed,) = [t for t in run.tests if t.outcome == "failed"]
        assert failed.cause.startswith("AssertionError: assert 'x86_64' == 'aarch64'")
        assert failed.last_milestone == "user-docker"  # where its machine's boot got to
        assert {m.name for m in run.boots[0].milestones} >= {"kernel", "user-docker"}


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from reports.results_db import record
url, what, folder, start = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
while time.time() < start:  # both writers start together
    time.sleep(0.005)
if what == "cells":
    from reports.results_record import run_from_cell
    for cell in sorted(folder.iterdir()):
        record(url, run_from_cell(cell), print)
else:
    from reports.bench import run_bench
    from test_reports_bench import Factory, options, quiet
    from dataclasses import replace
    for i in range(int(sys.argv[5])):
        run_bench(replace(options(folder / str(i), runs=3), results_db=url), quiet(),
                  Factory([None] * 3))
"""


def test_matrix_cells_beside_a_bench_record_at_once(db_url: str, tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    for i in range(12):
        make_cell(cells, f"cell{i:02}", [case_xml(BOOT), case_xml("scenarios/test_x.py::t",
                                                                   "failed", "boom")])
    for i, folder in enumerate(sorted(cells.iterdir())):  # each cell its own run id
        meta = json.loads((folder / "cell.json").read_text())
        (folder / "cell.json").write_text(json.dumps({**meta, "run_id": f"night-{i}"}))
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    start = str(time.time() + 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), db_url, "cells", str(cells), start],
                              env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, str(script), db_url, "bench",
                               str(tmp_path / "bench"), start, "12"],
                              env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "could not record" not in "".join(outputs), outputs
    with ResultsDB(db_url, create=False) as db:
        runs = db.runs()
    kinds = sorted(r.kind for r in runs)
    assert kinds == ["bench"] * 12 + ["cell"] * 12
    assert all(len(r.boots) == 3 for r in runs)
    assert all(len(r.tests) == 2 for r in runs if r.kind == "cell")


# -- a database that cannot be used --------------------------------------------------------


def test_unreachable_locked_or_deleted_database(tmp_path: Path) -> None:
    # unreachable: the run fails on its own merits (test_breaks), and says why not recorded
    proc = child_pytest(tmp_path / "a", "--results-db=postgresql://nobody@127.0.0.1:9/none")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "1 failed, 3 passed" in out, out
    assert "roslab: WARNING: could not record this run in the results database" in out, out

    # locked: another process holds SQLite's write lock longer than the writer waits
    db = tmp_path / "locked.db"
    ResultsDB(f"sqlite:///{db}").close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = child_pytest(tmp_path / "b", f"--results-db=sqlite:///{db}",
                            env={"ROSLAB_RESULTS_DB_WAIT": "2"})
        out = proc.communicate(timeout=120)[0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 1 and "1 failed, 3 passed" in out, out
    assert "could not record this run" in out and "database is locked" in out, out

    # deleted: the next run makes a new database (the history before it is gone)
    proc = child_pytest(tmp_path / "b", f"--results-db=sqlite:///{db}")
    assert "recorded scenarios run #1" in proc.communicate(timeout=120)[0]
    for path in tmp_path.glob("locked.db*"):
        path.unlink()
    proc = child_pytest(tmp_path / "b", f"--results-db=sqlite:///{db}")
    out = proc.communicate(timeout=120)[0]
    assert "schema created at 0002" in out and "recorded scenarios run #1" in out, out


def test_history_of_a_missing_database_is_an_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli("history", "flakes", "--results-db", str(tmp_path / "none.db"),
                       capsys=capsys)
    assert code == 2 and "no results database at" in err
    assert not (tmp_path / "none.db").exists()  # reading never makes an empty one


def test_the_projects_own_tests_are_not_recorded(tmp_path: Path) -> None:
    # no --platform, no --results-db, no ROSLAB_RESULTS_DB: not a lab run
    proc = child_pytest(tmp_path / "lab", env={"ROSLAB_RESULTS_DB": ""})
    assert "recorded" not in proc.communicate(timeout=120)[0]
    assert not (tmp_path / "lab" / "results").exists()


# -- importers and history -----------------------------------------------------------------


def test_importers_keep_what_earlier_runs_left(db_url: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "history.jsonl"
    for kind, rid in (("bench", "b1"), ("bench", "b1"), ("soak", "s1"), ("scenario", "p1")):
        record_ = history.new_record(context={"platform": "qemu", "arch": "x86_64",
                                              "image_version": "v1"},
                                     milestones={"kernel": 0.5, "user-docker": 31.0}, ok=True,
                                     run_id=rid, boot=1)
        record_["kind"] = kind
        history.append(bench, record_)
    (tmp_path / "junit.xml").write_text(junit([
        case_xml("scenarios/test_boot.py::test_a", props={"platform": "qemu", "arch": "x86_64",
                                                          "image_version": "v2"}),
        case_xml("scenarios/test_boot.py::test_b", "failed", "AssertionError: nope",
                 props={"last_milestone": "ssh"})]))
    cells = tmp_path / "matrix"
    make_cell(cells, "qemu-x86", [case_xml(BOOT, "failed", "boom")], [case_xml(BOOT)])
    for what, path in (("bench", bench), ("junit", tmp_path / "junit.xml"), ("matrix", cells)):
        code, out, _ = cli("history", "import", what, str(path), "--results-db", db_url,
                           capsys=capsys)
        assert code == 0 and "already there" in out
    code, out, _ = cli("history", "import", "junit", str(tmp_path / "junit.xml"),
                       "--results-db", db_url, capsys=capsys)
    assert "0 runs imported" in out and "1 already there" in out  # idempotent
    with ResultsDB(db_url, create=False) as db:
        runs = {r.kind: r for r in db.runs()}
        assert sorted(r.kind for r in db.runs()) == ["bench", "cell", "scenarios", "scenarios",
                                                     "soak"]
    assert len(runs["bench"].boots) == 2
    cell = runs["cell"]
    assert [(t.attempt, t.outcome) for t in cell.tests] == [(0, "failed"), (1, "passed")]
    junit_run = next(r for r in db.runs() if r.source == "import:junit")
    assert (junit_run.platform, junit_run.image_version) == ("qemu", "v2")
    failed = next(t for t in junit_run.tests if t.outcome == "failed")
    assert (failed.cause, failed.last_milestone) == ("AssertionError: nope", "ssh")


def test_history_first_failure_and_flakes(db_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    night = datetime(2025, 6, 1, 2, 0)
    plan = [  # (version, test_boot, test_net, rerun of test_net)
        ("v1", "passed", "passed", None), ("v1", "passed", "failed", "passed"),
        ("v1", "passed", "passed", None), ("v2", "failed", "failed", "failed"),
        ("v2", "failed", "passed", None)]
    with ResultsDB(db_url) as db:
        for i, (version, boot, net, rerun) in enumerate(plan):
            db.add(a_run(f"n{i}", night + timedelta(days=i), {"t::boot": boot, "t::net": net},
                         version=version, commit=f"c{i // 3}",
                         reruns={"t::net": rerun} if rerun else None, user_docker=30 + i))
    code, out, _ = cli("history", "test", "t::boot", "--json", "--results-db", db_url,
                       capsys=capsys)
    data = json.loads(out)
    assert [r["outcome"] for r in data["runs"]] == ["passed"] * 3 + ["failed"] * 2
    change = data["first_failure"]
    assert (change["last_pass"]["image_version"], change["last_pass"]["commit"]) == ("v1", "c0")
    assert (change["first_fail"]["image_version"], change["first_fail"]["commit"]) == \
        ("v2", "c1")
    assert change["failing_runs_since"] == 2
    code, out, _ = cli("history", "test", "boot", "--results-db", db_url, capsys=capsys)
    assert "first failing run" in out and "v2" in out

    code, out, _ = cli("history", "flakes", "--json", "--results-db", db_url, capsys=capsys)
    rows = {r["test"]: r for r in json.loads(out)["tests"]}
    # t::net passed on its rerun once (a flake); its v2 failure is no flake (new image),
    # nor the change back (same inputs as the failing run? no: v2 then v2 -> a flip)
    assert rows["t::net"]["passed_on_rerun"] == 1
    assert rows["t::net"]["flips"] == 1 and rows["t::net"]["flake_rate"] == 0.4
    assert rows["t::boot"]["flips"] == 0 and rows["t::boot"]["fail_rate"] == 0.4

    code, out, _ = cli("history", "milestone", "user-docker", "--json", "--results-db", db_url,
                       capsys=capsys)
    assert [r["median"] for r in json.loads(out)["runs"]] == [30, 31, 32, 33, 34]
    code, out, _ = cli("history", "cell", "qemu-x86", "--json", "--results-db", db_url,
                       capsys=capsys)
    assert json.loads(out)["runs"][-1]["outcomes"] == {"failed": 1, "passed": 1}


def test_bench_records_its_run(db_url: str, tmp_path: Path) -> None:
    from dataclasses import replace

    result = run_bench(replace(options(tmp_path, runs=3), results_db=db_url), quiet(),
                       Factory([None, RuntimeError("driver bug"), None]))
    with ResultsDB(db_url, create=False) as db:
        (run,) = db.runs()
    assert (run.kind, run.lab_run_id, run.platform) == ("bench", result.run_id, "qemu")
    assert [b.ok for b in run.boots] == [True, False, True]
    assert run.image_checksum and run.image_checksum.startswith("sha256:")


def test_matrix_report_reads_the_previous_nightly(db_url: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = make_cell(tmp_path / "night1", "qemu-x86", [case_xml(BOOT)], boots=[20.0, 22.0])
    with ResultsDB(db_url) as db:
        db.add(run_from_cell(before))
    make_cell(tmp_path / "night2", "qemu-x86", [case_xml(BOOT)], boots=[30.0, 32.0])
    code, _, _ = cli("matrix", "report", str(tmp_path / "night2"), "-o",
                     str(tmp_path / "report"), "--results-db", db_url, capsys=capsys)
    page = (tmp_path / "report" / "report.html").read_text()
    assert code == 0
    assert "31.0 (prev 21.0, +10.0)" in page  # user-docker medians, this night and the last
