"""``python -m bench``: the CLI (what ``--launcher torchrun`` starts on every rank)."""

import logging
import os
import sys

from bench.cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # bench.distributed.launched(), without importing torch
    # A torchrun rank leaves without interpreter finalization. Gloo's worker threads can still be
    # freeing a finished collective's work (tensors with Python objects) when the interpreter
    # tears down; taking the GIL then kills the thread inside a noexcept destructor, and the rank
    # dies with SIGABRT ("terminate called without an active exception") after a successful run:
    # about 1 resumed 2-rank run in 17 on two busy cores, seen in a core dump (pytorch#179291
    # describes the same race). Everything the run writes is already closed; flush and go.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status or 0))
sys.exit(status)
