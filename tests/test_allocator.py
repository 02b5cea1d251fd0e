"""retain_freed_memory: a large block freed and allocated again is not faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt and ru_minflt: Linux only"
)

# allocates and fills a 96 MiB tensor (above glibc's largest dynamic mmap threshold, 32 MiB)
# five times and prints the minor page faults of the last time (the heap settles in the
# first few: torch's own first allocations land around the block)
_CHILD = textwrap.dedent(
    """
    import resource, sys
    import torch
    from mtlkit.allocator import retain_freed_memory
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    for i in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(24 << 20)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del x
    print(applied, faults)
    """
)


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


def test_a_freed_block_is_reused_without_page_faults() -> None:
    applied, faults = _faults("retain")
    if applied != "True":
        pytest.skip("mallopt not available (not glibc)")
    pages = (96 << 20) // 4096
    assert faults < pages // 20  # reused: (almost) no page is faulted in again
    _, default_faults = _faults("default")
    assert default_faults > pages // 2  # by default the block is mapped afresh each time


def test_opt_out_by_environment() -> None:
    import os

    env = {**os.environ, "MTLKIT_MALLOC": "default"}
    applied, _ = _faults("retain", env)
    assert applied == "False"
