"""The command line with faults injected into pretraining, for tests that need a real process.

    python tests/faulty_pretrain.py [FAULTS] -- pretrain ARGS...
    python -m torch.distributed.run --nproc_per_node=2 tests/faulty_pretrain.py [FAULTS] -- ...

    --sigterm-at-step N    send this process SIGTERM after step N, through the runner's handler
    --nan-at-step N        make the loss of the N-th training step of this process NaN
    --sigkill-in-write N   kill -9 this process halfway through writing its N-th checkpoint

The shipped CLI has no test-only flags: this wraps `mae_tutorial.pretrain.pretrain` (through its
public `callback` and a forward hook) before `mae_tutorial.__main__` imports it, then runs `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from typing import Any

import torch

import mae_tutorial.pretrain as runner


def _inject(options: argparse.Namespace) -> None:
    real_pretrain, real_save, writes = runner.pretrain, torch.save, [0]

    def pretrain(
        model: Any, data: Any, settings: Any, out_dir: Any, resume: bool = False,
        callback: Any = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        def stop(info: runner.StepInfo) -> None:
            if callback is not None:
                callback(info)
            if info.step == options.sigterm_at_step:
                os.kill(os.getpid(), signal.SIGTERM)

        if options.nan_at_step is not None:
            calls = [0]

            def poison(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
                calls[0] += module.training  # eval-mode forwards (the runner's checks) not counted
                if module.training and calls[0] == options.nan_at_step:
                    return dataclasses.replace(output, loss=output.loss * float("nan"))
                return output

            model.register_forward_hook(poison)
        return real_pretrain(model, data, settings, out_dir, resume, stop, **kwargs)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        writes[0] += 1
        if writes[0] == options.sigkill_in_write:
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)

    runner.pretrain = pretrain
    torch.save = save


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="faulty_pretrain.py")
    for name in ("--sigterm-at-step", "--nan-at-step", "--sigkill-in-write"):
        parser.add_argument(name, type=int)
    _inject(parser.parse_args(argv[:split]))
    from mae_tutorial.__main__ import main as cli  # imports the wrapped `pretrain`

    return cli(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
