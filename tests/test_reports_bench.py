"""`roslab bench` with a Machine-shaped fake: failures are records, Ctrl-C keeps what ran,
and the CLI actions (compare exit codes, merge, report) work end to end."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import pytest
from rich.console import Console

from commands import bench as command
from lab.errors import BootTimeout, ConfigError
from reports import history
from reports.bench import BenchOptions, _sigterm_as_interrupt, run_bench
from reports.fake import DEFAULT_MILESTONES, FakeMachine


def options(tmp_path: Path, runs: int = 4, image: Path | None = None) -> BenchOptions:
    if image is None:
        image = tmp_path / "image"
        image.mkdir(parents=True, exist_ok=True)
        (image / "initrd").write_bytes(b"i" * 2048)
        (image / "rancheros.iso").write_bytes(b"s" * 4096)
    return BenchOptions(
        platform="qemu",
        image=image,
        runs=runs,
        arch="x86_64",
        accel="tcg",
        history=tmp_path / "history.jsonl",
        timeout=30,
    )


class Factory:
    """make_machine stand-in; `plan[i]` is what boot i+1 raises (None: boots fine)."""

    def __init__(
        self, plan: list[BaseException | None], slow: float = 0.0, version: str = "v1"
    ) -> None:
        self.plan, self.slow, self.version, self.made = plan, slow, version, []

    def __call__(self, platform: str, image: Path, arch: str, **kw) -> FakeMachine:
        fail = self.plan[len(self.made)]
        milestones = {k: v + self.slow for k, v in DEFAULT_MILESTONES.items()}
        m = FakeMachine(
            platform, image, arch, fail=fail, milestones=milestones, version=self.version, **kw
        )
        self.made.append(m)
        return m


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"))  # noqa: SIM115 -- closed with the process


def test_failed_boots_are_records_and_the_bench_goes_on(tmp_path: Path) -> None:
    boom = BootTimeout("no login prompt", expected="login:", milestone="init")
    factory = Factory([None, boom, RuntimeError("driver bug"), None])
    result = run_bench(options(tmp_path), quiet(), factory)

    records = history.read(tmp_path / "history.jsonl")
    assert [r["ok"] for r in records] == [True, False, False, True]
    assert records[1]["error"].startswith("BootTimeout: no login prompt")
    assert records[1]["milestones"] == {"kernel": 0.4, "init": 1.1}  # partial timeline kept
    assert records[2]["error"] == "unexpected RuntimeError: driver bug"
    assert result.failed == 2 and not result.interrupted
    assert all(m.entered and m.exited for m in factory.made)
    for r in records:
        assert r["host"] and r["date"].endswith("Z") and r["schema"] == history.SCHEMA
        assert (r["platform"], r["arch"], r["accel"]) == ("qemu", "x86_64", "tcg")
        assert r["image_version"] == "v1"
        assert r["sizes"] == {"initrd": 2048, "iso": 4096}
        assert Path(r["console_log"]).is_file()
    # Each boot's console log is kept beside the history, failed boots' too, although
    # the machine removes its own work folder when it stops.
    assert Path(records[1]["console_log"]).read_text().endswith("console line 60\n")
    assert not any(m.workdir.exists() for m in factory.made)


def test_ctrl_c_stops_the_machine_and_keeps_finished_boots(tmp_path: Path) -> None:
    factory = Factory([None, KeyboardInterrupt(), None])
    result = run_bench(options(tmp_path, runs=3), quiet(), factory)
    assert result.interrupted
    assert len(factory.made) == 2 and factory.made[1].exited  # stopped through __exit__
    assert len(history.read(tmp_path / "history.jsonl")) == 1  # written before the interrupt


def test_bad_input_fails_before_any_machine(tmp_path: Path) -> None:
    factory = Factory([])
    with pytest.raises(ConfigError, match="--runs"):
        run_bench(options(tmp_path, runs=0), quiet(), factory)
    with pytest.raises(ConfigError, match="does not exist"):
        run_bench(options(tmp_path, image=tmp_path / "missing"), quiet(), factory)
    assert factory.made == []


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="roslab")
    command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_bench_without_action_runs_the_bench() -> None:
    args = parse("bench", "--platform", "qemu", "--runs", "5")
    assert args.func is command.cmd_run and (args.platform, args.runs) == ("qemu", 5)


def test_compare_exit_codes_and_merge_report(tmp_path: Path, capsys) -> None:
    # Deterministic jitter so the rank test has distinct samples.
    jitter = [0.0, 0.03, -0.02, 0.05, -0.04, 0.01, 0.02, -0.01]

    def bench(folder: Path, slow: float, version: str = "v1") -> Path:
        for j in jitter:
            run_bench(options(folder, runs=1), quiet(), Factory([None], slow + j, version))
        return folder / "history.jsonl"

    base_h, same_h, slow_h = (
        bench(tmp_path / "base", 0.0),
        bench(tmp_path / "same", 0.001),
        bench(tmp_path / "cand", 0.5, "v2"),
    )
    args = parse("bench", "compare", "--baseline", str(base_h), "--candidate", str(slow_h))
    assert args.func(args) == 1
    assert "REGRESSION" in capsys.readouterr().out
    args = parse("bench", "compare", "--baseline", str(base_h), "--candidate", str(same_h))
    assert args.func(args) == 0
    args = parse("bench", "compare", "--baseline", str(base_h))
    with pytest.raises(ConfigError, match="same records"):
        args.func(args)
    # A filter selects the candidate from a merged history.

    merged = tmp_path / "all.jsonl"
    args = parse("bench", "merge", str(base_h), str(slow_h), str(base_h), "-o", str(merged))
    assert args.func(args) == 0
    assert len(history.read(merged)) == 16
    args = parse(
        "bench",
        "compare",
        "--baseline",
        str(merged),
        "--where",
        "platform=qemu",
        "--baseline-where",
        "image_version=v1",
        "--candidate-where",
        "image_version=v2",
    )
    assert args.func(args) == 1
    report = tmp_path / "r.html"
    args = parse("bench", "report", str(merged), "-o", str(report))
    assert args.func(args) == 0
    assert "<svg" in report.read_text()


def test_sigterm_stops_like_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
