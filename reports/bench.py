"""`roslab bench`: N cold boots of one image, each boot's milestones appended to the
history as soon as the boot ends.

Robustness is the point of this module: a boot that fails is a record (ok=false, the
error, the partial timeline), not the end of the bench; Ctrl-C or SIGTERM stops the
current machine through its context manager and keeps every finished boot.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from lab.errors import ConfigError, LabError
from reports import history
from reports.history import Record
from reports.results_db import utc
from reports.stats import failure_counts, milestone_samples, phase_durations, summarize

MachineFactory = Callable[..., Any]  # drivers.machines.make_machine's signature


@dataclass(frozen=True)
class BenchOptions:
    platform: str
    image: Path | None
    runs: int
    arch: str
    accel: str
    history: Path
    timeout: float
    workdir: Path | None = None
    platform_options: dict[str, str] = field(default_factory=dict)  # --hw, --libvirt-uri...
    # soak runs: checks made on each booted machine (raise to fail that boot); the
    # record says whose failure it was (LabError.blame)
    check: Callable[[Any], None] | None = None
    kind: str = "bench"
    platform_options: dict[str, Any] = field(default_factory=dict)  # --place, ...
    results_db: str | None = None  # the results database's URL (None: not recorded)


@dataclass
class BenchResult:
    run_id: str
    records: list[Record]
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return failure_counts(self.records)[1]


def validate(opts: BenchOptions) -> None:
    """Bad input is an error before any machine starts."""
    if opts.runs < 1:
        raise ConfigError(f"--runs must be at least 1, not {opts.runs}")
    if opts.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, not {opts.timeout}")
    if opts.image is not None and not opts.image.exists():
        raise ConfigError(f"--image {opts.image} does not exist")
    if opts.history.exists() and not opts.history.is_file():
        raise ConfigError(f"--history {opts.history} is not a file")
    from drivers import driver_class

    why = driver_class(opts.platform).not_ready(opts.platform_options)
    if why is not None:  # a platform's SDK, credentials or place missing: before any boot
        raise ConfigError(why)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # A CI job timeout sends SIGTERM; treat it like Ctrl-C so the machine's context
    # manager stops the guest instead of leaving a QEMU behind.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _PhaseTicker:
    """Shows the step and the last milestone the current machine reached."""

    def __init__(self, progress: Progress, task: Any, label: str) -> None:
        self.progress, self.task, self.label = progress, task, label
        self.step = "starting"
        self.machine: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _PhaseTicker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.refresh()

    def refresh(self) -> None:
        milestone = "-"
        timeline = getattr(self.machine, "timeline", None)
        if timeline is not None:
            marks = dict(timeline.marks)  # copy: the console thread adds marks meanwhile
            if marks:
                milestone = max(marks.items(), key=lambda kv: kv[1])[0]
        self.progress.update(
            self.task, description=f"{self.label} {self.step:<18} last milestone: {milestone}"
        )


def resolve_image(opts: BenchOptions, console: Console) -> Path:
    """The image to boot: --image, or the reference image built/cached for the arch."""
    if opts.image is not None:
        return opts.image
    from drivers.machines import resolve_image as reference  # lazy: the builder is heavy

    def progress(message: object, *args: object, **kwargs: object) -> None:
        console.print(f"[dim]reference image:[/] {message}")

    return reference(None, opts.arch, progress, opts.platform, opts.platform_options).path


def _boot_once(
    factory: MachineFactory,
    opts: BenchOptions,
    image: Path,
    evidence: Path,
    ticker: _PhaseTicker,
) -> tuple[Any, str | None, str | None, Path | None]:
    """One cold boot -> (machine, error or None, whose failure, kept console log).

    Only KeyboardInterrupt escapes, after the machine's __exit__ stopped the guest.
    """
    machine = None
    log: Path | None = None
    try:
        machine = factory(
            opts.platform,
            image,
            opts.arch,
            cloud_config=None,
            datasource="default",
            workdir=evidence.parent,
            accel=opts.accel,
            platform_options=opts.platform_options,
        )
        ticker.machine = machine
        with machine:
            try:
                ticker.step = "booting"
                machine.boot(timeout=opts.timeout)
                if machine.capabilities.ssh:  # raspi3b in QEMU has no network
                    ticker.step = "ssh"
                    machine.ssh()  # connecting marks the ssh milestone
                ticker.step = "user docker"
                machine.wait_for_user_docker(opts.timeout)
                ticker.step = "boot times"
                machine.collect_boot_times()
                if opts.check is not None:
                    ticker.step = "contract checks"
                    opts.check(machine)
                ticker.step = "stopping"
            finally:
                # Before __exit__: the machine removes its work folder when it stops.
                log = _keep_evidence(machine, evidence)
        return machine, None, None, log
    except LabError as exc:
        return machine, f"{type(exc).__name__}: {exc}", exc.blame, log
    except Exception as exc:  # a lab bug on one boot must not lose the other boots
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return machine, f"unexpected {last}", "lab", log


def _record(
    machine: Any,
    opts: BenchOptions,
    image: Path,
    run_id: str,
    boot: int,
    error: str | None,
    log: Path | None,
    blame: str | None = None,
) -> Record:
    info = dict(getattr(machine, "info", None) or {})
    info.setdefault("platform", opts.platform)
    info.setdefault("arch", opts.arch)
    info.setdefault("accel", opts.accel)
    info.setdefault("image", str(image))
    context = history.machine_context(info)
    timeline = getattr(machine, "timeline", None)
    record = history.new_record(
        context=context,
        milestones=timeline.to_dict() if timeline is not None else {},
        ok=error is None,
        error=error,
        run_id=run_id,
        boot=boot,
        sizes=history.image_sizes(context["image"] or image),
        console_log=str(log.resolve()) if log else None,
    )
    record["kind"] = opts.kind
    if getattr(machine, "service_spans", None):
        record["services"] = {name: {step: round(at, 3) for step, at in steps.items()}
                              for name, steps in machine.service_spans.items()}
    if blame is not None:
        record["blame"] = blame
    return record


def _keep_evidence(machine: Any, dest: Path) -> Path | None:
    """Console log (and what else the machine keeps) of one boot into `dest`."""
    log = machine.keep_artifacts(dest)  # Machine's own list: console, cloud-config, timeline
    return Path(log) if log and Path(log).is_file() else None


def _one_boot(
    factory: MachineFactory,
    opts: BenchOptions,
    image: Path,
    run_dir: Path,
    run_id: str,
    boot: int,
    progress: Progress,
    task: Any,
) -> Record:
    evidence = run_dir / f"boot-{boot}"
    with _PhaseTicker(progress, task, f"boot {boot}/{opts.runs}") as ticker:
        machine, error, blame, log = _boot_once(factory, opts, image, evidence, ticker)
    record = _record(machine, opts, image, run_id, boot, error, log, blame)
    history.append(opts.history, record)
    if error is not None:
        progress.console.print(f"[red]boot {boot} failed[/] (evidence: {evidence}): {error}")
    return record


def start_run(opts: BenchOptions, console: Console) -> tuple[Path, str, Path]:
    """Checked options -> (image, run id, the run's folder)."""
    validate(opts)
    image = resolve_image(opts, console)
    run_id = f"{history.utc_now().replace(':', '')}-{uuid.uuid4().hex[:6]}"
    # Console logs of every boot and the work folder of failed boots stay beside the
    # history: evidence for the slow or failed boot someone asks about next week.
    run_dir = (opts.workdir or opts.history.parent / "bench-runs") / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return image, run_id, run_dir


def run_bench(
    opts: BenchOptions, console: Console | None = None, factory: MachineFactory | None = None
) -> BenchResult:
    console = console or Console(stderr=True)
    started = utc()
    image, run_id, run_dir = start_run(opts, console)
    if factory is None:
        from drivers.machines import make_machine  # lazy: lab core loads drivers and paramiko
        from lab.ssh import KeyPair

        # One key for the run: the ssh milestone needs a login the guest accepts.
        factory = functools.partial(make_machine, ssh_key=KeyPair.generate(run_dir / "key"))
    result = BenchResult(run_id=run_id, records=[])
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with _sigterm_as_interrupt(), Progress(*columns, console=console) as progress:
        task = progress.add_task("bench", total=opts.runs)
        boot = 0
        try:
            for boot in range(1, opts.runs + 1):
                result.records.append(
                    _one_boot(factory, opts, image, run_dir, run_id, boot, progress, task)
                )
                progress.advance(task)
        except KeyboardInterrupt:
            # The machine's __exit__ already stopped the guest; an interrupted boot is
            # no measurement, so it is not recorded. Finished boots are on disk.
            result.interrupted = True
            progress.console.print(f"[yellow]interrupted during boot {boot}[/]")
    print_summary(result.records, console, title=f"{opts.kind} run {run_id}")
    console.print(f"history: {opts.history}")
    record_bench(opts, result.records, run_id, started, result.interrupted, console)
    return result


def record_bench(opts: BenchOptions, records: list[Record], run_id: str, started: datetime,
                 interrupted: bool, console: Console) -> None:
    """Into the results database too (a bench, soak or restore bench)."""
    from reports.results_record import record_bench as record

    record(opts.results_db, records, kind=opts.kind, lab_run_id=run_id, started=started,
           interrupted=interrupted, hw=opts.platform_options.get("hw"),
           say=lambda message: console.print(f"roslab: {message}", highlight=False))


def fmt_s(value: float) -> str:
    return f"{value:.3f}"


def stats_table(records: list[Record], title: str) -> Table:
    """Per milestone: seconds since power-on (min, median, p95, spread) and phase median."""
    table = Table(title=title)
    for col in ("milestone", "n", "min", "median", "p95", "IQR", "stdev", "phase median"):
        table.add_column(col, justify="left" if col == "milestone" else "right")
    phases = summarize(phase_durations(records))
    for name, s in summarize(milestone_samples(records)).items():
        phase = phases.get(name)
        table.add_row(
            name,
            str(s.n),
            fmt_s(s.min),
            fmt_s(s.median),
            fmt_s(s.p95),
            fmt_s(s.iqr),
            fmt_s(s.stdev),
            fmt_s(phase.median) if phase else "-",
        )
    return table


def print_summary(records: list[Record], console: Console, title: str) -> None:
    ok, failed = failure_counts(records)
    console.print(stats_table(records, title))
    console.print(
        f"{ok} boots completed, " + (f"[red]{failed} failed[/]" if failed else "0 failed")
    )
    sizes = next((r["sizes"] for r in reversed(records) if r.get("sizes")), None)
    if sizes:
        console.print(
            "image sizes: "
            + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sizes.items()))
        )
