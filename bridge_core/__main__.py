"""`python -m bridge_core` runs the `bridge-core` command."""

import sys

from .cli import main

sys.exit(main())
