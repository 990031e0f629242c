"""A real PostgreSQL server (Debian's ``postgresql`` package) backs a study shared by two workers.

The server is started here, on loopback, in a temporary data directory owned by the ``postgres`` user
when the tests run as root (PostgreSQL refuses to run as root), and stopped afterwards. Where the
binaries, the ``postgres`` user or the driver are missing, the test is skipped and says why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.tune.helpers import index_entries, tiny_tune_overrides, worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        pytest.skip(
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/pg_ctl; apt-get install postgresql)"
        )
    bindir = Path(bins[-1]).parent
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="mtlbench-pg-"))
    if os.geteuid() == 0:  # postgres refuses root: run it as the package's `postgres` user
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no `postgres` user to start PostgreSQL as")
        if runuser is None:
            shutil.rmtree(folder)
            pytest.skip(
                "running as root and `runuser` is missing, so PostgreSQL cannot be started as postgres"
            )
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)

    init = run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    start = run(
        str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"
    )
    if start.returncode != 0:
        log = (folder / "log").read_text()[-300:] if (folder / "log").exists() else start.stderr
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {log.strip()}")
    try:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_a_study_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    n = 2
    args = ["--trials", str(n), "--storage", postgres_url, "--study", "pg", *tiny_tune_overrides(tmp_path)]
    procs = [worker(tmp_path, *args, log=f"worker{i}.log") for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=240) == 0, (tmp_path / f"worker{i}.log").read_text()
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n and len(study.trials) == n
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete  # the median pruner never prunes before two trials have completed
    index = index_entries(tmp_path / "runs")
    assert len({t.user_attrs["run_id"] for t in complete}) == len(complete)
    for t in complete:
        assert {"study": "pg", "trial": t.number} in index[t.user_attrs["run_id"]]["tune"]
