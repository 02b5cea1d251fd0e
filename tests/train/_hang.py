"""Run ``mtlkit`` with one rank that stops responding:
``python -m tests.train._hang RANK CALL -- mtlkit args...`` (under torchrun).

On rank RANK, the CALL-th all-reduce never starts: the process sleeps (alive, holding its
connections, answering nothing), as a rank stuck in a data loader or a dead file system would.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist


def main() -> int:
    rank, call = int(sys.argv[1]), int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    torch.set_num_threads(1)
    from mtlkit.cli import main as cli

    original = dist.all_reduce
    calls = {"n": 0}

    def all_reduce(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if int(os.environ["RANK"]) == rank and calls["n"] == call:
            while True:
                time.sleep(60)
        return original(*a, **k)

    dist.all_reduce = all_reduce
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
