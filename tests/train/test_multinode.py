"""Two torchrun "nodes" of one process each on 127.0.0.1 (c10d rendezvous): they train to the
single-process result, and a lost node or a hung rank ends every rank within
MTLKIT_DIST_TIMEOUT with one readable line per rank, exit status non-zero."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import small_digits_config

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10  # MTLKIT_DIST_TIMEOUT of the failure tests
#: torchrun's agent notices its worker's exit (monitor interval), stops and reports
AGENT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, epochs: int, batch_size: int = 32) -> Path:
    cfg = small_digits_config(epochs=epochs)
    cfg["data"]["batch_size"] = batch_size
    cfg["weighting"] = {"name": "upgrad"}
    path = tmp / f"config-{epochs}-{batch_size}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **extra}


class Nodes:
    """Two torchrun agents (nodes 0 and 1), each starting one worker; each agent in its own
    session, its worker's output in its own log folder."""

    def __init__(self, tmp: Path, args: list[str], **env: str) -> None:
        self.tmp = tmp
        port = _free_port()
        self.procs = []
        for node in range(2):
            logs = tmp / f"node{node}"
            logs.mkdir()
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                f"test-{port}",
                "--monitor-interval",
                "0.5",
                "--log-dir",
                str(logs),
                "--redirects",
                "3",
                *args,
            ]
            self.procs.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=_env(**env),
                    stdout=(logs / "agent.out").open("w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"the nodes did not end within {timeout} s:\n{self.report()}")

    def kill(self, node: int) -> None:
        """SIGKILL a node: its agent and every process under it (torchrun starts its workers
        in sessions of their own, so the agent's process group is not enough)."""
        pids = _descendants(self.procs[node].pid)
        for pid in [self.procs[node].pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs[node].wait()

    def kill_all(self) -> None:
        for node, p in enumerate(self.procs):
            if p.poll() is None:
                self.kill(node)

    def worker_stderr(self, node: int) -> str:
        logs = sorted((self.tmp / f"node{node}").rglob("stderr.log"))
        assert len(logs) == 1, logs
        return logs[0].read_text()

    def report(self) -> str:
        parts = []
        for node in range(2):
            agent = (self.tmp / f"node{node}" / "agent.out").read_text()[-3000:]
            worker = "".join(
                p.read_text()[-3000:] for p in (self.tmp / f"node{node}").rglob("std*.log")
            )
            parts.append(f"--- node {node} agent:\n{agent}\n--- node {node} worker:\n{worker}")
        return "\n".join(parts)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _assert_one_readable_line(stderr: str, *words: str) -> str:
    """The worker's output ends with one ``mtlkit: rank N:`` line and holds no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("mtlkit: rank")]
    assert len(ours) == 1, stderr[-3000:]
    assert _last_line(stderr) == ours[0]
    for word in words:
        assert word in ours[0], ours[0]
    return ours[0]


@pytest.fixture(autouse=True)
def _linux_only() -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("kills a node's processes through /proc")


@pytest.mark.slow
def test_two_nodes_train_like_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    started = time.monotonic()
    nodes = Nodes(
        tmp_path,
        ["-m", "mtlkit", "train", str(_config(tmp_path, 2)), "--out", str(tmp_path / "run")],
    )
    codes = nodes.wait(120)
    assert codes == [0, 0], nodes.report()
    took = time.monotonic() - started
    reference = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlkit",
            "train",
            str(_config(tmp_path, 2, 64)),
            "--out",
            str(tmp_path / "one"),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stderr
    # one run folder, written once (by rank 0, on whichever node it landed)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("run", "one"))) == [
        "one",
        "run",
    ]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["best_epoch"] == expected["best_epoch"]
    for split in ("val", "test"):
        for task, metrics in expected[split].items():
            for name, value in metrics.items():
                assert results[split][task][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (
                    split,
                    task,
                    name,
                )
    # the CNN's BatchNorm normalises each rank's half-batch (docs/distributed.md, Limits): the
    # weights agree to BatchNorm's difference, not bit for bit (the engine's exactness is
    # tests/train/test_distributed.py's, on models without batch statistics)
    for folder in ("checkpoint", "best"):
        got = load_file(str(tmp_path / "run" / folder / "model.safetensors"))
        want = load_file(str(tmp_path / "one" / folder / "model.safetensors"))
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-2, msg=key)
    print(f"two nodes trained in {took:.1f} s")


@pytest.mark.slow
def test_a_lost_node_ends_the_other_within_the_timeout(tmp_path: Path) -> None:
    run = tmp_path / "run"
    nodes = Nodes(
        tmp_path,
        ["-m", "mtlkit", "train", str(_config(tmp_path, 500)), "--out", str(run)],
        MTLKIT_DIST_TIMEOUT=str(TIMEOUT_S),
    )
    deadline = time.monotonic() + 90
    while not (run / "metrics.jsonl").exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in nodes.procs):
            nodes.kill_all()
            pytest.fail(f"training did not start:\n{nodes.report()}")
        time.sleep(0.2)
    nodes.kill(1)
    lost = time.monotonic()
    code = nodes.wait(TIMEOUT_S + AGENT_S)[0]
    took = time.monotonic() - lost
    assert code != 0, nodes.report()
    line = _assert_one_readable_line(nodes.worker_stderr(0), "training stopped", "every rank stops")
    print(f"node 0 ended {took:.1f} s after node 1 was lost: {line}")


@pytest.mark.slow
def test_a_hung_rank_ends_every_rank_within_the_timeout(tmp_path: Path) -> None:
    # rank 1 stops answering at its 20th all-reduce (a few steps into the first epoch)
    nodes = Nodes(
        tmp_path,
        [
            "-m",
            "tests.train._hang",
            "1",
            "20",
            "--",
            "train",
            str(_config(tmp_path, 500)),
            "--out",
            str(tmp_path / "run"),
        ],
        MTLKIT_DIST_TIMEOUT=str(TIMEOUT_S),
    )
    started = time.monotonic()
    codes = nodes.wait(60 + TIMEOUT_S + AGENT_S)
    took = time.monotonic() - started
    assert codes[0] != 0 and codes[1] != 0, nodes.report()
    lines = [_assert_one_readable_line(nodes.worker_stderr(n), "training stopped") for n in (0, 1)]
    waited = next(line for line in lines if "MTLKIT_DIST_TIMEOUT=10 s" in line)
    hung = next(line for line in lines if line is not waited)
    assert "every rank stops" in waited
    assert "failed (a collective failed" in hung, hung
    print(f"both nodes ended {took:.1f} s after start:\n" + "\n".join(lines))
