"""`roslab bench restore`: boot one machine, save it, then restore it N times.

Each restore is timed from its start (a new emulator loading the saved state) to the
console shell answering (the `restored` milestone), and each restored machine passes the
soak's contract check (services, two Docker daemons, SSH on its own port) before it
stops: a restore that is fast but broken is a failure, not a figure. Every restore is a
history record of kind "restore", so `bench show --where kind=restore` summarizes them.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from dataclasses import replace
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lab import gc
from lab import timeline as tl
from lab.errors import LabError
from reports import history
from reports.bench import BenchOptions, _sigterm_as_interrupt, fmt_s, record_bench, start_run
from reports.history import Record
from reports.results_db import utc


def run_restore_bench(opts: BenchOptions, console: Console | None = None) -> list[Record]:
    from drivers.machines import make_machine
    from lab.ssh import KeyPair
    from reports.soak import contract_check

    console = console or Console(stderr=True)
    started = utc()
    image, run_id, run_dir = start_run(opts, console)
    make = functools.partial(make_machine, opts.platform, image, opts.arch, None, "default",
                             run_dir, opts.accel, ssh_key=KeyPair.generate(run_dir / "key"))
    records: list[Record] = []
    interrupted = False
    with _sigterm_as_interrupt(), contextlib.ExitStack() as keep:
        template = keep.enter_context(make(name="template"))
        console.print("booting the template machine ...")
        template.boot(timeout=opts.timeout)
        template.settle()
        saving = time.monotonic()
        # RAM-sized: in a scratch folder, which gc removes if this process is SIGKILLed
        scratch = gc.scratch_dir()
        keep.callback(shutil.rmtree, scratch, ignore_errors=True)
        snapshot = template.snapshot(scratch / "snapshot")
        saved = time.monotonic() - saving
        console.print(f"saved in {saved:.2f} s: {snapshot.size / 2**20:.0f} MiB of state")
        try:
            for n in range(1, opts.runs + 1):
                records.append(_restore_once(make, snapshot, opts, run_id, n, contract_check))
                history.append(opts.history, records[-1])
                r = records[-1]
                status = "ok" if r["ok"] else f"[red]{r['error']}[/]"
                console.print(f"restore {n}/{opts.runs}: "
                              f"{r['milestones'].get(tl.RESTORED, float('nan')):.3f} s {status}")
        except KeyboardInterrupt:
            interrupted = True
            console.print(f"[yellow]interrupted after {len(records)} restores[/]")
    console.print(restore_table(records, saved, snapshot.size))
    console.print(f"history: {opts.history}")
    record_bench(replace(opts, kind="restore"), records, run_id, started, interrupted, console)
    return records


def _restore_once(make: Any, snapshot: Any, opts: BenchOptions, run_id: str, n: int,
                  check: Any) -> Record:
    machine = make(name=f"restore{n}")
    error = None
    with machine:
        try:
            machine.restore(snapshot, timeout=opts.timeout)
            check(machine)
        except LabError as exc:
            error = f"{type(exc).__name__}: {exc}"
    record = history.new_record(
        context=history.machine_context(machine.info), milestones=machine.timeline.to_dict(),
        ok=error is None, error=error, run_id=run_id, boot=n)
    record["kind"] = "restore"
    return record


def restore_table(records: list[Record], saved: float, size: int) -> Table:
    table = Table(title=f"restores from one snapshot ({size / 2**20:.0f} MiB, saved in "
                        f"{saved:.2f} s)")
    for col in ("milestone", "n", "min", "median", "p95", "max"):
        table.add_column(col, justify="left" if col == "milestone" else "right")
    for name in (tl.RESUMED, tl.RESTORED):
        values = [r["milestones"][name] for r in records if r["ok"] and name in r["milestones"]]
        if values:
            table.add_row(name, str(len(values)), fmt_s(min(values)),
                          fmt_s(float(np.median(values))),
                          fmt_s(float(np.percentile(values, 95))), fmt_s(max(values)))
    failed = sum(1 for r in records if not r["ok"])
    table.caption = f"{len(records) - failed} restored machines passed the contract check, " \
                    f"{failed} failed"
    return table
