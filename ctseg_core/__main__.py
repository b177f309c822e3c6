"""`python -m ctseg_core`: the command line (see ctseg_core.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
