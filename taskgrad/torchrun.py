"""``python -m taskgrad.torchrun``: ``torch.distributed.run`` as ``taskgrad train --nproc`` uses it.

The same launcher, with two differences on an interrupt: torchrun passes SIGINT on to the workers
(each stops at a step boundary; rank 0 prints the one line naming the step and the resume
command) and then exits quietly with status 128 + the signal, instead of a traceback of its own
``SignalException``; and its loggers speak only for errors (a worker that failed; ``LOGLEVEL``
set by the user wins), not for the warnings that repeat what the workers say.
"""

from __future__ import annotations

import logging
import os
import sys


def main() -> int:
    os.environ.setdefault("LOGLEVEL", "ERROR")  # torch.distributed.elastic's loggers read it
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    if os.environ["LOGLEVEL"] == "ERROR":  # loggers that do not read LOGLEVEL themselves
        logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        torchrun()
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
