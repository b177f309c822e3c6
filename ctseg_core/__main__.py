"""`python -m ctseg_core`: the command line (see ctseg_core.cli)."""

import logging
import os
import sys

from .cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank started by torchrun
        # Its process group is destroyed and every file written and closed by now, but gloo's
        # threads can still abort the process's C++ teardown after Python has finished
        # ("terminate called without an active exception": one finished 2-rank run in about
        # 150 on a busy 2-core CPU), which torchrun reports as a failed run: leave without it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
