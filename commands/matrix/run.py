"""`roslab matrix run`: run cells here, one after another, exactly as their CI jobs do.

Each cell writes its own results folder:

    <results>/<cell>/cell.json          the cell, its policy, each attempt's command and exit code
    <results>/<cell>/junit.xml          the run; rerun-junit.xml for the rerun of its failures
    <results>/<cell>/allure-results/    both attempts (allure shows the rerun as a retry)
    <results>/<cell>/bench.jsonl        a boot record per machine (reports/history.py)
    <results>/<cell>/artifacts/         console logs of failed tests (rerun-artifacts/ too)
    <results>/<cell>/pytest.log         pytest's output (rerun-pytest.log)

Flake policy: the scenarios that failed are run once more in a new pytest session, so on
fresh machines; the report decides what a pass on the rerun counts as.

A cell whose secrets are not all set is *not configured*: its cell.json names the missing
variables and nothing runs; the report shows it neutral (neither red nor green).

`--rehearse` runs a cloud cell against its driver's stand-in on this host (the stand-in
boots a real QEMU guest for every instance the unchanged driver creates) instead of the
cloud: no secrets needed. The stand-in lives in this process for the whole cell, so the
cell's `roslab gc --platform P` (as its CI job runs it) sweeps the same stand-in; what the
stand-in still holds after that (instances, images, keys, guests, ports) makes the cell
red. cell.json says the cell was rehearsed, never that it ran on the cloud.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO

from commands.matrix.plan import REFERENCE, Cell, Matrix
from drivers import driver_class
from lab.driver import Rehearsal
from lab.errors import ConfigError
from reports.history import utc_now
from reports.matrix import CellVerdict, cell_verdict, read_junit

RERUN = "rerun-"  # prefix of the rerun's files in a cell folder


def resolve_image(cell: Cell, say: IO[str]) -> str | None:
    """The --image for pytest: None for the reference image (pytest builds it on first use),
    a file of the reference build for `reference:FILE`, else the path as written."""
    if cell.image == REFERENCE:
        return None
    if cell.image.startswith(f"{REFERENCE}:"):
        from refimage.build import ensure_image

        name = cell.image.split(":", 1)[1]
        folder = ensure_image(cell.arch, progress=lambda m: print(f"roslab: {m}", file=say))
        from refimage.disks import NAMES, ensure_disks

        if name in NAMES:  # a cloud's disk: an opt-in part of the build
            ensure_disks(folder, progress=lambda m: print(f"roslab: {m}", file=say))
        path = folder / name
        if not path.exists():
            raise ConfigError(f"cell {cell.id!r}: the {cell.arch} reference image has no "
                              f"{name} (in {folder})")
        return str(path)
    return cell.image


def pytest_command(cell: Cell, root: Path, out: Path, image: str | None, selection: list[str],
                   prefix: str = "", rehearsal: Rehearsal | None = None) -> list[str]:
    """The pytest run of one attempt; what a CI job runs, through `roslab matrix run`.

    The rootdir is the matrix file's folder, so node ids (in JUnit, in the rerun's
    selection, in known failures) are the paths written in matrix.yml; pytest would
    otherwise guess it from any path on the command line, --image's included."""
    cmd = [sys.executable, "-m", "pytest", *selection, f"--rootdir={root}",
           "--platform", cell.platform, "--arch", cell.arch]
    if image is not None:
        cmd += ["--image", image]
    if cell.hw:
        cmd += ["--hw", cell.hw]
    if cell.budgets:
        cmd += ["--budgets", cell.budgets]
    if cell.keyword and not prefix:  # a rerun names its node ids exactly
        cmd += ["-k", cell.keyword]
    for key, value in (rehearsal.options if rehearsal else {}).items():
        cmd += ["--platform-option", f"{key}={value}"]
    cmd += [*cell.options,
            f"--junitxml={out / f'{prefix}junit.xml'}",
            "-o", f"junit_suite_name={cell.id}",
            f"--alluredir={out / 'allure-results'}",
            f"--roslab-artifacts={out / f'{prefix}artifacts'}",
            f"--roslab-bench-history={out / 'bench.jsonl'}",
            "-p", "no:cacheprovider", "-rs"]
    return cmd


def listen_to_sigint() -> None:
    """preexec_fn of the cell's pytest: it is stopped with SIGINT (below), so it must not
    inherit an ignored SIGINT, which is what nohup, a shell's background job or some CI
    agents give; it would otherwise run on for the minute until it is killed, and a
    killed run cannot remove its temp dirs or cloud instances."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _attempt(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> dict[str, object]:
    """Run pytest, its output to the terminal and to `log`; returns what cell.json keeps."""
    started = time.monotonic()
    record: dict[str, object] = {"command": cmd, "started": utc_now()}
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                preexec_fn=listen_to_sigint)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                fh.write(line)
            proc.wait()
        except BaseException:
            # Ctrl-C/SIGTERM: pytest stops its machines on SIGINT, as it would at a terminal
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    record.update(exit_code=proc.returncode, seconds=round(time.monotonic() - started, 1))
    return record


ACCEL_LINE = re.compile(r"^roslab: accel (\S+) \((.*)\)$", re.M)  # pytest's report header


def accelerator(log: Path) -> dict[str, str]:
    """The accelerator the cell's pytest used and why, as its report header says."""
    text = log.read_text("utf-8", errors="replace") if log.is_file() else ""
    found = ACCEL_LINE.search(text)
    return {"accel": found[1], "why": found[2]} if found else {}


def missing_secrets(cell: Cell) -> list[str]:
    return [name for name in cell.secrets if not os.environ.get(name)]


def run_cell(matrix: Matrix, cell: Cell, results: Path, rehearse: bool = False,
             results_db: str | None = None) -> CellVerdict:
    """Run one cell into results/<cell id> and judge it. A cell that cannot run here (its
    secrets unset; with `rehearse`, a cloud without a stand-in) is recorded as not
    configured, naming why. The cell (both attempts and its boots) is recorded in the
    results database at `results_db`."""
    root = matrix.path.resolve().parent
    out = (results / cell.id).resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: results of a cell are never mixed "
                          "(remove it or give another --results)")
    cls = driver_class(cell.platform)
    standin = cls.rehearsal() if rehearse and cls.in_cloud else None
    not_configured: dict[str, object] | None = None
    if rehearse and cls.in_cloud and standin is None:
        not_configured = {"missing": [], "why": f"platform {cell.platform} has no stand-in "
                          "to rehearse against yet"}
    elif standin is None and (missing := missing_secrets(cell)):
        not_configured = {"missing": missing, "why": "secret(s) not set: "
                          f"{', '.join(missing)} (CI: the repository's secrets or CI/CD "
                          "variables)"}
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ROSLAB_RUN_ID", f"{utc_now().replace(':', '')}-{cell.id}")
    env["PYTHONUNBUFFERED"] = "1"  # pytest's progress shows as it happens, not at the end
    env["ROSLAB_RESULTS_DB"] = "off"  # the cell is recorded once, whole, below
    meta: dict[str, object] = {
        "cell": asdict(cell), "policy": matrix.policy(cell.id), "matrix": str(matrix.path),
        "host": socket.gethostname(), "run_id": env["ROSLAB_RUN_ID"], "started": utc_now(),
        "attempts": [],
    }

    def save() -> None:
        (out / "cell.json").write_text(json.dumps(meta, indent=1, default=str), "utf-8")

    if not_configured is not None:
        meta.update(not_configured=not_configured, finished=utc_now())
        save()
        return _judged(cell, out, results_db)
    save()
    with standin if standin is not None else contextlib.nullcontext() as rehearsal:
        if rehearsal is not None:
            env.update(rehearsal.env)
            meta["rehearsed"] = {"what": rehearsal.what}
            print(f"roslab matrix: cell {cell.id}: rehearsed against {rehearsal.what}",
                  flush=True)
        try:
            _attempts(cell, root, out, env, meta, save, rehearsal)
        finally:
            if rehearsal is not None:
                meta["rehearsed"] = _after_rehearsal(cell, root, out, env, rehearsal)
            save()
    return _judged(cell, out, results_db)


def _judged(cell: Cell, out: Path, results_db: str | None) -> CellVerdict:
    """The cell's verdict, said, and recorded in the results database when one is given."""
    verdict = cell_verdict(out)
    print(f"roslab matrix: cell {cell.id}: {verdict.summary()}", flush=True)
    if results_db is not None:
        from reports.results_db import record
        from reports.results_record import run_from_cell

        record(results_db, run_from_cell(out), lambda m: print(f"roslab matrix: {m}", flush=True))
    return verdict


def _attempts(cell: Cell, root: Path, out: Path, env: dict[str, str], meta: dict[str, object],
              save: Callable[[], None], rehearsal: Rehearsal | None) -> None:
    """The run, then the rerun of its failures, each recorded in meta as it ends."""
    attempts: list[dict[str, object]] = meta["attempts"]  # type: ignore[assignment]
    try:
        image = resolve_image(cell, sys.stdout)
        print(f"roslab matrix: cell {cell.id} ({cell.describe()}) -> {out}", flush=True)
        cmd = pytest_command(cell, root, out, image, list(cell.scenarios), rehearsal=rehearsal)
        attempts.append(_attempt(cmd, root, out / "pytest.log", env))
        meta["accelerator"] = accelerator(out / "pytest.log")
        save()
        failed = [c.nodeid for c in read_junit(out / "junit.xml") if c.outcome == "failed"] \
            if (out / "junit.xml").is_file() else []
        if failed:
            print(f"roslab matrix: cell {cell.id}: rerunning {len(failed)} failed "
                  "scenario(s) once, on fresh machines", flush=True)
            cmd = pytest_command(cell, root, out, image, failed, prefix=RERUN,
                                 rehearsal=rehearsal)
            attempts.append({**_attempt(cmd, root, out / f"{RERUN}pytest.log", env),
                             "rerun": failed})
    except KeyboardInterrupt:
        meta["interrupted"] = True  # the report names the cell as interrupted, not as run
        raise
    finally:
        meta["finished"] = utc_now()
        save()


def _after_rehearsal(cell: Cell, root: Path, out: Path, env: dict[str, str],
                     rehearsal: Rehearsal) -> dict[str, object]:
    """The cell's gc against the stand-in, as its CI job runs it, then what is left."""
    gc = subprocess.run([sys.executable, "-m", "commands.cli", "gc", "--platform",
                         cell.platform], cwd=root, env=env, capture_output=True, text=True,
                        timeout=600)
    (out / "gc.log").write_text(gc.stdout + gc.stderr, "utf-8")
    guests = rehearsal.guests()
    accels = sorted({f"{g.get('accel')} ({g.get('accel_reason')})" for g in guests})
    return {"what": rehearsal.what, "gc_exit_code": gc.returncode,
            "gc": gc.stdout.strip().splitlines()[-1:], "guests": guests,
            "accelerator": "; ".join(accels) or "no guest booted",
            "leftovers": rehearsal.leftovers()}
