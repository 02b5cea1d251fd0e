"""Run ``mtlkit`` in this process, killing it with SIGKILL at a chosen point of a checkpoint
write: ``python -m tests.faults._runner POINT N -- mtlkit args...``.

POINT is ``save_file`` (the N-th safetensors file written, ``checkpoint.write_tensors``:
the best weights, then the checkpoint's model and state), ``replace`` (the N-th rename of
the checkpoint swap) or ``none``.
"""

from __future__ import annotations

import os
import signal
import sys

import torch


def main() -> int:
    point, n = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    torch.set_num_threads(1)
    from mtlkit.cli import main as cli
    from mtlkit.train import checkpoint

    calls = {"n": 0}

    def killing(original):
        def wrapper(*a, **k):
            if point == "replace" and not sys._getframe(1).f_code.co_filename.endswith(
                "checkpoint.py"
            ):
                return original(*a, **k)  # count the checkpoint swap's renames only
            calls["n"] += 1
            if calls["n"] == n:
                if point == "replace":
                    original(*a, **k)  # the first of the two renames has happened
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*a, **k)

        return wrapper

    if point == "save_file":
        checkpoint.write_tensors = killing(checkpoint.write_tensors)
    elif point == "replace":
        os.replace = killing(os.replace)
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
