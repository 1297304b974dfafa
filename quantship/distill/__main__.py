"""``torchrun --nproc-per-node 2 -m quantship distill ...`` runs quantship's CLI in each
process; this module lets ``python -m quantship.distill ...`` do the same."""

import sys

from quantship.cli import main

raise SystemExit(main(["distill", *sys.argv[1:]]))
