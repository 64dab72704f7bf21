"""``python -m bench``: the CLI (what ``--launcher torchrun`` starts on every rank)."""

import sys

from bench.cli import main

sys.exit(main())
