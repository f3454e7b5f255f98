"""Stop signals wait for a store write to end (textrnn.stopping), so a stopped run always ends KILLED.

The end-to-end case (a stopped `textrnn train`) is in test_faults_training.py; here the signal is sent
while MLflow writes to sqlite nearly all the time, which is where an unguarded handler cuts a transaction
in half and ending the run fails with "database is locked"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fault_kit import fault
from textrnn import stopping
from textrnn.errors import Terminated


@pytest.fixture
def installed() -> Iterator[None]:
    """textrnn's stop handlers for the test, pytest's own restored afterwards."""
    previous = {signum: signal.getsignal(signum) for signum in stopping.STOP_SIGNALS}
    stopping.install()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends(installed, signum, raised) -> None:
    reached = []
    with pytest.raises(raised):
        with stopping.deferred():
            with stopping.deferred():  # nested: only the outermost block's end raises
                os.kill(os.getpid(), signum)
                reached.append("inner end")
            reached.append("outer end")
    assert reached == ["inner end", "outer end"]


def test_a_signal_outside_a_deferred_block_is_raised_at_once(installed) -> None:
    with pytest.raises(Terminated) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary, well within this loop
            pass
        pytest.fail("SIGTERM was not raised")
    assert caught.value.signum == signal.SIGTERM


def test_a_held_signal_is_raised_once_and_then_forgotten(installed) -> None:
    with pytest.raises(Terminated):
        with stopping.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
    ran = []
    with stopping.deferred():  # a signal still pending from the block above would be raised again here
        ran.append("quiet block")
    assert ran == ["quiet block"]


def test_the_deferred_decorator_returns_the_value(installed) -> None:
    @stopping.deferred()
    def write() -> int:
        os.kill(os.getpid(), signal.SIGINT)
        return 7

    with pytest.raises(KeyboardInterrupt):
        write()

    @stopping.deferred()
    def quiet() -> int:
        return 7

    assert quiet() == 7


# One process, many rounds: each opens a run, logs epochs to a sqlite store as fast as it can (almost every
# instant is inside a transaction), and is stopped by a timer thread at a random moment. A round prints its
# run id; the parent reads every run's status from the store.
_LOGGER = """
import os, random, signal, sys, threading
import mlflow
from textrnn import runs, stopping, tracking
from textrnn.errors import Terminated
stopping.install()
mlflow.set_tracking_uri(sys.argv[1])
chance = random.Random(int(sys.argv[2]))
for round in range(int(sys.argv[3])):
    run = mlflow.start_run()
    signum = (signal.SIGTERM, signal.SIGINT)[round % 2]
    threading.Timer(chance.uniform(0.01, 0.3), os.kill, (os.getpid(), signum)).start()
    try:
        with runs.ending():
            epoch = 0
            while True:
                tracking.log_epoch("lstm", {"epoch": epoch, "loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5,
                                            "train_accuracy": 0.5, "seconds": 0.1, "samples_per_second": 9.0})
                epoch += 1
    except (Terminated, KeyboardInterrupt):
        print(run.info.run_id, flush=True)
"""


@fault(11, "SIGTERM / SIGINT while MLflow writes per-epoch metrics to sqlite (30 random moments)",
       "every run ends KILLED, no traceback, no database lock left")
def test_stopping_mid_write_always_ends_the_run_killed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    rounds = 30
    result = subprocess.run([sys.executable, "-c", _LOGGER, uri, "12", str(rounds)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "database is locked" not in result.stderr, result.stderr
    run_ids = result.stdout.split()
    assert len(run_ids) == rounds
    client = MlflowClient(tracking_uri=uri)
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", (run_id, run.info.status)
        assert run.data.metrics, "a round was stopped before it logged an epoch"
