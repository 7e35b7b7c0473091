"""`python -m rsdistill` (and `accelerate launch -m rsdistill`) runs the `rsdistill` command."""

import sys

from rsdistill.cli.main import main

sys.exit(main())
