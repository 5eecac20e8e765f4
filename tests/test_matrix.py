"""matrix.yml: validated once (a bad cell is refused, named); the committed CI files are
what `roslab matrix emit` writes today and pass the CI systems' schemas (check-jsonschema's
built-in vendor schemas, offline), and say what the nightly needs."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from commands.cli import main
from commands.matrix import plan as mx
from commands.matrix.emit import DEFAULT_OUTPUT, emit
from lab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "matrix.yml"
CHECK = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or \
    shutil.which("check-jsonschema")
SCHEMAS = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}


def write_matrix(tmp_path: Path, text: str) -> Path:
    """A matrix beside a copy of the scenarios (paths in a matrix are relative to it)."""
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "matrix.yml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        mx.load(write_matrix(tmp_path, text), today=dt.date(2026, 6, 1))
    return str(info.value)


def test_the_repository_matrix_loads() -> None:
    matrix = mx.load(MATRIX)
    ids = [c.id for c in matrix.cells]
    assert {"qemu-x86_64-pc", "qemu-aarch64-virt", "qemu-aarch64-raspi3b"} <= set(ids)
    assert [c.id for c in matrix.where(["platform=qemu", "arch=aarch64"])] == \
        ["qemu-aarch64-virt", "qemu-aarch64-raspi3b"]
    with pytest.raises(ConfigError, match="--where 'colour=red'"):
        matrix.where(["colour=red"])


def test_a_copy_with_an_unknown_platform_and_an_expired_entry_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, """
cells:
  - {id: good, platform: qemu, arch: x86_64}
  - {id: on-the-moon, platform: moon, arch: x86_64}
known_failures:
  - {scenario: scenarios/test_boot.py::test_reaches_every_boot_milestone, cells: [good],
     tracker: https://tracker.example/1, expires: 2026-05-31}
""")
    assert "cell 'on-the-moon': unknown platform 'moon' (implemented: aliyun, aws, " in message
    assert ", libvirt, openstack, qemu)" in message
    assert ("known_failures 'scenarios/test_boot.py::test_reaches_every_boot_milestone' "
            "(cell 'good'): expired on 2026-05-31") in message
    assert "cell 'good':" not in message  # the good cell is not blamed


@pytest.mark.parametrize("cell, expected", [
    ("{id: a, platform: qemu, arch: sparc}", "cell 'a': platform qemu boots x86_64, aarch64, "
                                             "not 'sparc'"),
    ("{id: a, platform: qemu, arch: x86_64, scenaros: [x]}", "cell 'a': unknown key 'scenaros'"),
    ("{id: A b, platform: qemu, arch: x86_64}", "cell 'A b': `id` must be"),
    ("{platform: qemu, arch: x86_64}", "cell #1: `id` must be"),
    ("{id: a, platform: qemu, arch: x86_64, scenarios: [scenarios/test_nothing.py]}",
     "cell 'a': scenario selection 'scenarios/test_nothing.py' does not exist"),
    ("{id: a, platform: qemu, arch: x86_64, secrets: [hunter2]}",
     "cell 'a': secret 'hunter2' is not a secret's name"),
    ("{id: a, platform: qemu, arch: x86_64, timeout_minutes: 999}",
     "cell 'a': timeout_minutes must be an integer 1..360"),
    ("{id: a, platform: qemu, arch: x86_64, budgets: nope.yml}",
     "cell 'a': budgets file 'nope.yml' does not exist"),
])
def test_a_malformed_cell_is_refused_naming_it(tmp_path: Path, cell: str, expected: str) -> None:
    assert expected in refused(tmp_path, f"cells:\n  - {cell}\n")


def test_entries_and_ids_are_checked(tmp_path: Path) -> None:
    message = refused(tmp_path, """
cells:
  - {id: a, platform: qemu, arch: x86_64}
  - {id: a, platform: qemu, arch: aarch64}
known_failures:
  - {scenario: test_boot, tracker: https://t/1, expires: 2027-01-01}
  - {scenario: scenarios/test_boot.py::x, cells: [zz], tracker: nowhere, expires: 2027-01-01}
allowed_flakes:
  - {scenario: scenarios/test_boot.py::x}
""")
    assert "cell 'a': the id is used twice" in message
    assert "`scenario` must be a pytest id" in message
    assert "(cell 'zz'): no cell 'zz' in this matrix" in message
    assert "(cell 'zz'): `tracker` must be the issue's http(s) link" in message
    assert "allowed_flakes 'scenarios/test_boot.py::x' (every cell): `tracker`" in message


def test_an_entry_is_valid_through_its_expiry_date(tmp_path: Path) -> None:
    path = write_matrix(tmp_path, """
cells: [{id: a, platform: qemu, arch: x86_64}]
known_failures:
  - {scenario: scenarios/test_boot.py::x, tracker: https://t/1, expires: 2026-06-01}
""")
    assert mx.load(path, today=dt.date(2026, 6, 1)).known_failures[0].applies("a")
    with pytest.raises(ConfigError, match="expired on 2026-06-01"):
        mx.load(path, today=dt.date(2026, 6, 2))


def test_the_command_refuses_a_broken_matrix_before_running(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            ) -> None:
    path = write_matrix(tmp_path, "cells:\n  - {id: x, platform: moon, arch: x86_64}\n")
    for action in (["plan"], ["run", "--cell", "x"], ["emit", "github", "-o", str(tmp_path / "o")]):
        assert main(["matrix", *action[:1], "--file", str(path), *action[1:]]) == 2
        assert "cell 'x': unknown platform 'moon'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "results").exists()


def test_plan_json_lists_the_cells(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "plan", "--file", str(MATRIX), "--json"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert [c["id"] for c in data["cells"]] == [c.id for c in mx.load(MATRIX).cells]


@pytest.mark.parametrize("system", ["github", "gitlab"])
def test_committed_ci_file_is_what_emit_writes_today(system: str) -> None:
    committed = (ROOT / DEFAULT_OUTPUT[system]).read_text()
    assert committed == emit(mx.load(MATRIX), system), (
        f"{DEFAULT_OUTPUT[system]} is stale: run `roslab matrix emit {system}` and commit it")


def validate(system: str, path: Path) -> subprocess.CompletedProcess[str]:
    assert CHECK, "check-jsonschema is a dev dependency (pyproject.toml)"
    return subprocess.run([CHECK, "--builtin-schema", SCHEMAS[system], str(path)],
                          capture_output=True, text=True, timeout=120)


def cloud_matrix() -> mx.Matrix:
    """The repository's cells, a cloud cell with secrets among them."""
    matrix = mx.load(MATRIX)
    assert any(c.platform == "aws" and c.secrets for c in matrix.cells)
    return matrix


@pytest.mark.parametrize("system", ["github", "gitlab"])
def test_emitted_files_pass_the_ci_schema(system: str, tmp_path: Path) -> None:
    proc = validate(system, ROOT / DEFAULT_OUTPUT[system])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with_cloud = tmp_path / "with-cloud.yml"
    with_cloud.write_text(emit(cloud_matrix(), system))
    proc = validate(system, with_cloud)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the schema check can fail: a job without what it must have is refused
    data = yaml.safe_load(with_cloud.read_text())
    if system == "github":
        del data["jobs"]["cell"]["runs-on"]
    else:
        data["report"]["when"] = "sometimes"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(data))
    assert validate(system, broken).returncode != 0


def test_github_workflow_semantics() -> None:
    wf = yaml.safe_load(emit(cloud_matrix(), "github"))
    assert set(wf[True] if True in wf else wf["on"]) == {"schedule", "workflow_dispatch"}
    cell, report = wf["jobs"]["cell"], wf["jobs"]["report"]
    assert cell["strategy"]["fail-fast"] is False
    assert cell["timeout-minutes"] == "${{ matrix.timeout }}"
    include = cell["strategy"]["matrix"]["include"]
    assert [i["cell"] for i in include] == [c.id for c in cloud_matrix().cells]
    assert {i["cell"]: i["timeout"] for i in include}["aws-x86_64"] == 90
    steps = {s.get("name", s.get("uses")): s for s in cell["steps"]}
    assert "--cell ${{ matrix.cell }}" in steps["Run the cell"]["run"]
    upload = steps["Upload the cell's results"]
    assert upload["if"] == "${{ always() }}"
    assert upload["with"]["name"] == "results-${{ matrix.cell }}"  # unique per cell
    gc = steps["Remove what the cell left on its platform"]
    assert gc["if"] == "${{ always() && matrix.cloud }}" and "roslab gc --platform" in gc["run"]
    # gc for every platform whose machines can outlive the job (libvirt domains too)
    clouds = {"aws", "gce", "digitalocean", "openstack", "cloudstack", "aliyun"}
    assert {i["cell"]: i["cloud"] for i in include} == {
        c.id: c.platform in clouds | {"libvirt"} for c in mx.load(MATRIX).cells}
    # every cloud has a cell, and each cloud cell names its secrets
    assert {i["platform"] for i in include if i["secrets"]} == clouds
    # /dev/kvm opened to the job by the udev rule GitHub documents, before the cell runs
    names = [s.get("name", s.get("uses")) for s in cell["steps"]]
    assert names.index("Open /dev/kvm to the job") < names.index("Run the cell")
    kvm = steps["Open /dev/kvm to the job"]["run"]
    assert ('KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' in kvm
            and "/etc/udev/rules.d/99-kvm4all.rules" in kvm
            and "udevadm control --reload-rules" in kvm
            and "udevadm trigger --name-match=kvm" in kvm)
    start = steps["Start the platform's services"]
    assert start["if"] == "${{ matrix.setup != '' }}"
    assert start["env"]["SETUP"] == "${{ matrix.setup }}"
    assert all(("libvirtd" in i["setup"]) == (i["platform"] == "libvirt") for i in include)
    # secrets by name, each only for the cells that name it
    assert cell["env"]["AWS_ACCESS_KEY_ID"] == (
        "${{ contains(matrix.secrets, 'AWS_ACCESS_KEY_ID') && secrets.AWS_ACCESS_KEY_ID || '' }}")
    assert report["needs"] == "cell" and report["if"] == "${{ always() }}"
    download = next(s for s in report["steps"] if "download-artifact" in s.get("uses", ""))
    assert download["with"] == {"pattern": "results-*", "path": "results/matrix",
                                "merge-multiple": True}


def test_a_credentials_file_secret_is_written_where_its_sdk_reads_it(tmp_path: Path) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS names a file; the CI secret holds its content. The
    emitted step (run here by bash, as on the runner) writes it to a private file and
    points the variable at it; a value that is already a path stays as it is."""
    wf = yaml.safe_load(emit(mx.load(MATRIX), "github"))
    cell = wf["jobs"]["cell"]
    include = {i["cell"]: i for i in cell["strategy"]["matrix"]["include"]}
    assert include["gce-x86_64"]["file_secrets"] == "GOOGLE_APPLICATION_CREDENTIALS"
    assert include["aws-x86_64"]["file_secrets"] == ""
    step = next(s for s in cell["steps"] if s.get("name") == "Write the credentials files")
    assert step["if"] == "${{ matrix.file_secrets != '' }}"
    # a stand-in for a service-account key file's JSON, made here (no key in the tree)
    key = json.dumps({"type": "service_account", "private_key_id": os.urandom(8).hex()})
    github_env = tmp_path / "github_env"
    env = {"PATH": "/usr/bin:/bin", "RUNNER_TEMP": str(tmp_path), "GITHUB_ENV": str(github_env),
           "FILE_SECRETS": "GOOGLE_APPLICATION_CREDENTIALS OTHER_FILE",
           "GOOGLE_APPLICATION_CREDENTIALS": key, "OTHER_FILE": "/etc/already-a-path.json"}
    subprocess.run(["bash", "-e", "-c", step["run"]], env=env, check=True)
    written = tmp_path / "GOOGLE_APPLICATION_CREDENTIALS.json"
    assert written.read_text() == key and written.stat().st_mode & 0o777 == 0o600
    assert github_env.read_text() == f"GOOGLE_APPLICATION_CREDENTIALS={written}\n"
    assert "make these of type File" in emit(mx.load(MATRIX), "gitlab")


def test_gitlab_pipeline_semantics() -> None:
    doc = yaml.safe_load(emit(cloud_matrix(), "gitlab"))
    rules = [r["if"] for r in doc["workflow"]["rules"]]
    assert '$CI_PIPELINE_SOURCE == "schedule"' in rules and '$CI_PIPELINE_SOURCE == "web"' in rules
    jobs = {k: v for k, v in doc.items() if k.startswith("cell-")}
    cells = {e["CELL"]: (name, e) for name, job in jobs.items()
             for e in job["parallel"]["matrix"]}
    assert set(cells) == {c.id for c in cloud_matrix().cells}
    for c in cloud_matrix().cells:
        name, entry = cells[c.id]
        assert jobs[name]["timeout"] == f"{c.timeout_minutes} minutes"
        assert entry["CLOUD"] == ("yes" if c.cloud else "no")
    job = jobs[cells["aws-x86_64"][0]]
    assert "roslab gc --platform $PLATFORM" in job["after_script"][0]
    assert job["artifacts"]["when"] == "always" and job["artifacts"]["name"] == "results-$CELL"
    assert doc["report"]["when"] == "always"
    assert {n["job"] for n in doc["report"]["needs"]} == set(jobs)


def test_the_mutation_tests_run_nightly_and_only_there() -> None:
    """The per-commit command (the README's, .ci/run's) leaves out exactly the mutation
    tests; both emitted nightlies run exactly those, keep their results, print the table."""
    selected = {}
    for marks in ("mutation", "not mutation"):
        run = subprocess.run([sys.executable, "-m", "pytest", "tests/", "--collect-only", "-q",
                              "-m", marks, "-p", "no:cacheprovider"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        selected[marks] = {line for line in run.stdout.splitlines() if "::" in line}
    from mutants import MUTANTS  # tests/ is on sys.path (rootdir conftest mode)

    assert selected["mutation"] == {
        f"tests/test_mutants.py::test_mutant_fails_its_scenarios_with_their_causes[{m.name}]"
        for m in MUTANTS}
    assert "tests/test_mutants.py::test_every_scenario_has_a_mutant" in selected["not mutation"]
    for command in ((ROOT / "README.md").read_text().splitlines()[3],
                    (ROOT / ".ci" / "run").read_text()):
        assert "pytest tests/ -n 2 -m \"not mutation\"" in command
    job = yaml.safe_load(emit(mx.load(MATRIX), "github"))["jobs"]["mutation"]
    runs = [s.get("run", "") for s in job["steps"]]
    assert any("pytest tests/ -m mutation" in r for r in runs)
    assert any("roslab mutants" in r for r in runs)
    upload = next(s for s in job["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["if"] == "${{ always() }}" and upload["with"]["path"] == "results/mutants/"
    lab = yaml.safe_load(emit(mx.load(MATRIX), "gitlab"))["mutation"]
    assert "pytest tests/ -m mutation" in lab["script"][0]
    assert lab["after_script"] == [".venv/bin/roslab mutants"]
    assert lab["artifacts"]["when"] == "always"


def test_every_scenario_module_datasource_and_cloud_disk_has_a_cell() -> None:
    """Every scenario module runs in some cell; each metadata datasource and each cloud
    disk of the reference build has a QEMU cell (the disk booted with its datasource)."""
    from lab.cloudconfig import METADATA_DATASOURCES
    from refimage.disks import NAMES

    cells = mx.load(MATRIX).cells
    selected = {Path(s.split("::")[0]) for c in cells for s in c.scenarios}
    modules = {p.relative_to(ROOT) for p in (ROOT / "scenarios").glob("test_*.py")}
    covered = {m for m in modules if m in selected or any(
        m.is_relative_to(s) for s in selected if not s.suffix)}
    assert covered == modules
    qemu = [c for c in cells if c.platform == "qemu"]
    datasources = {c.options[c.options.index("--datasource") + 1] for c in qemu
                   if "--datasource" in c.options}
    assert set(METADATA_DATASOURCES) <= datasources
    assert {c.image.split(":", 1)[1] for c in qemu if c.image.startswith("reference:")} \
        >= set(NAMES)


def test_a_cloud_without_a_stand_in_is_not_configured_when_rehearsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from commands.matrix.run import run_cell
    from drivers.cloudstack import CloudStackDriver

    # every cloud driver has a stand-in today: this is a driver added without one
    monkeypatch.setattr(CloudStackDriver, "rehearsal", classmethod(lambda cls: None))
    matrix = mx.load(MATRIX)
    verdict = run_cell(matrix, matrix.cell("cloudstack-x86_64"), tmp_path, rehearse=True)
    assert verdict.not_configured == \
        "platform cloudstack has no stand-in to rehearse against yet"
    assert not verdict.green and not verdict.broken
    assert json.loads((tmp_path / "cloudstack-x86_64" / "cell.json").read_text())[
        "attempts"] == []
