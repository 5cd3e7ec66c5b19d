"""`python -m flowlens ...` (also under `torchrun -m flowlens` and `accelerate launch -m flowlens`)."""

import sys

from flowlens.cli import main

sys.exit(main())
