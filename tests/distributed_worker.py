"""Runs `rsdistill` command lines one after another in one process; tests/test_distributed.py starts it twice
with torchrun, so each command runs as a user's ``torchrun --nproc_per_node 2 -m rsdistill ...`` would, while
torch and diffusers are imported once per process for all of them.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py COMMANDS``,
where COMMANDS is a JSON file holding a list of argument lists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rsdistill.cli.main import main


def run(commands: Path) -> int:
    for argv in json.loads(commands.read_text()):
        code = main(argv)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
