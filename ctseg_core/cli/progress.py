"""tqdm progress bars for the command line (the library only takes callbacks)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def tqdm_callback(desc: str, unit: str = "subject") -> tuple[Callable[..., None], tqdm]:
    """A ``progress(done, total, *info)`` callback driving a tqdm bar on stderr; close the bar after."""
    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None)

    def update(done: int, total: int, *info: object) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        if info:
            bar.set_postfix_str(str(info[0]), refresh=False)
        bar.refresh()

    return update, bar
