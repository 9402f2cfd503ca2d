"""``python -m taskgrad.torchrun``: ``torch.distributed.run`` as ``taskgrad train --nproc`` uses it.

The same launcher, with three differences. On an interrupt, torchrun passes SIGINT on to the
workers (each stops at a step boundary; rank 0 prints the one line naming the step and the
resume command) and then exits quietly with status 128 + the signal, instead of a traceback of
its own ``SignalException``. When every worker exits with a status that means "already reported
in one line by rank 0" (2, a user error; 130, an interrupt; the others may have been stopped by
the launcher meanwhile), it exits with that status and adds nothing, instead of its failure
report. And its loggers speak only for errors (a worker that failed otherwise; ``LOGLEVEL`` set
by the user wins), not for the warnings that repeat what the workers say.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

REPORTED = (2, 130)  # exit statuses whose error rank 0 has printed (cli.main)


class _Reported(logging.Filter):
    """Drops the launcher's "failed (exitcode: N)" line for a status in REPORTED."""

    def filter(self, record: logging.LogRecord) -> bool:
        failed = str(record.msg).startswith("failed (exitcode")
        return not (failed and record.args and record.args[0] in REPORTED)


def main() -> int:
    os.environ.setdefault("LOGLEVEL", "ERROR")  # torch.distributed.elastic's loggers read it
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if os.environ["LOGLEVEL"] == "ERROR":  # loggers that do not read LOGLEVEL themselves
        logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_Reported())
    try:
        torchrun()
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        first = min(e.failures.values(), key=lambda failure: failure.timestamp)
        # The others, if they failed at all, were stopped by the launcher after the first.
        after = {failure.exitcode for failure in e.failures.values()} - {-signal.SIGTERM}
        if first.exitcode in REPORTED and after <= set(REPORTED):
            return first.exitcode
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
