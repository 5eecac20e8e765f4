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
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO

from commands.matrix.plan import REFERENCE, Cell, Matrix
from lab.errors import ConfigError
from reports.history import utc_now
from reports.matrix import cell_verdict, read_junit

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
        path = folder / name
        if not path.exists():
            raise ConfigError(f"cell {cell.id!r}: the {cell.arch} reference image has no "
                              f"{name} (in {folder})")
        return str(path)
    return cell.image


def pytest_command(cell: Cell, root: Path, out: Path, image: str | None, selection: list[str],
                   prefix: str = "") -> list[str]:
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


def run_cell(matrix: Matrix, cell: Cell, results: Path, results_db: str | None = None) -> bool:
    """Run one cell into results/<cell id>; True when its verdict is green. The cell (both
    attempts and its boots) is recorded in the results database at `results_db`."""
    root = matrix.path.resolve().parent
    missing = [name for name in cell.secrets if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"cell {cell.id!r} needs the secret(s) {', '.join(missing)} in its "
                          "environment (CI: the repository's secrets or CI/CD variables)")
    out = (results / cell.id).resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: results of a cell are never mixed "
                          "(remove it or give another --results)")
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
    attempts: list[dict[str, object]] = meta["attempts"]  # type: ignore[assignment]

    def save() -> None:
        (out / "cell.json").write_text(json.dumps(meta, indent=1, default=str), "utf-8")

    save()
    try:
        image = resolve_image(cell, sys.stdout)
        print(f"roslab matrix: cell {cell.id} ({cell.describe()}) -> {out}", flush=True)
        cmd = pytest_command(cell, root, out, image, list(cell.scenarios))
        attempts.append(_attempt(cmd, root, out / "pytest.log", env))
        save()
        failed = [c.nodeid for c in read_junit(out / "junit.xml") if c.outcome == "failed"] \
            if (out / "junit.xml").is_file() else []
        if failed:
            print(f"roslab matrix: cell {cell.id}: rerunning {len(failed)} failed "
                  "scenario(s) once, on fresh machines", flush=True)
            cmd = pytest_command(cell, root, out, image, failed, prefix=RERUN)
            attempts.append({**_attempt(cmd, root, out / f"{RERUN}pytest.log", env),
                             "rerun": failed})
    except KeyboardInterrupt:
        meta["interrupted"] = True  # the report names the cell as interrupted, not as run
        raise
    finally:
        meta["finished"] = utc_now()
        save()
    verdict = cell_verdict(out)
    print(f"roslab matrix: cell {cell.id}: {verdict.summary()}", flush=True)
    if results_db is not None:
        from reports.results_db import record
        from reports.results_record import run_from_cell

        record(results_db, run_from_cell(out), lambda m: print(f"roslab matrix: {m}", flush=True))
    return verdict.green
