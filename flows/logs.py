"""textrnn's own log lines (per-epoch losses, the ONNX provider, registry versions) in the log of the
Prefect run that wrote them.

textrnn logs to the `textrnn` logger and its children (`textrnn.data`), quietly: the CLI gives that logger
WARNING and a stderr handler of its own, and anywhere else it inherits the root logger's WARNING (Prefect's
logging config). A Prefect run's log holds what reaches Prefect's `APILogHandler`, which Prefect attaches to
its own loggers only. `textrnn_logs_in_prefect` attaches one to `textrnn` while a flow runs, lets INFO
through to it and nowhere else: the handlers that printed textrnn's lines before (the CLI's, the root's
console) keep getting exactly what they got. The handler finds the run from the context each line is
written in (a task run's line goes to that task run), in the flow's own process, in a process-pool process
(Prefect forwards API logs from there to the parent) and in a worker's flow-run process alike.

Why in the flows, and not with PREFECT_LOGGING_EXTRA_LOGGERS in prefect.yaml's job env: Prefect applies that
setting when it is imported, by adding its handler and nothing else (Prefect 3.9), so the logger would stay at
the root's WARNING and no INFO line would be written; lowering its level for the whole process would print
every line on the terminal too (through propagation to the root's console handler). The setting would also
have to be set wherever a run starts (each shell, CI, every worker's job), where this needs nothing: one
mechanism covers local runs, process-pool processes and workers. A logger already given Prefect's handler (by
that setting) keeps it and gets no second one. Propagation is switched off only while a flow runs, and a
handler passes on to the root's handlers what propagation passed them before: pytest's `caplog` sees the same.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

TEXTRNN_LOGGER = "textrnn"
RUN_LOG_LEVEL = logging.INFO  # what a Prefect run's log shows of textrnn

_lock = threading.Lock()
_holders = 0  # flows in this process inside `textrnn_logs_in_prefect`
_restore: Callable[[], None] | None = None


class _Propagate(logging.Handler):
    """What propagation did: hand the records at or above this handler's level to the handlers of the
    logger's ancestors."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__(level)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        # As `Logger.callHandlers` walks up, without its last resort (the logger has handlers of its own).
        ancestor = self.logger.parent
        while ancestor is not None:
            for handler in ancestor.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
            ancestor = ancestor.parent if ancestor.propagate else None


def _install() -> Callable[[], None]:
    """Route textrnn's INFO lines to Prefect's API log handler; returns what undoes it."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger(TEXTRNN_LOGGER)
    before = logger.getEffectiveLevel()  # what textrnn's handlers and the root's received until now
    saved = (logger.level, logger.propagate, [(handler, handler.level) for handler in logger.handlers])
    for handler in logger.handlers:
        if not isinstance(handler, APILogHandler):
            handler.setLevel(max(handler.level, before))  # the CLI's stderr stays at its WARNING
    added: list[logging.Handler] = []
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        added.append(APILogHandler(level=RUN_LOG_LEVEL))
    if logger.propagate:
        added.append(_Propagate(logger, before))
        logger.propagate = False
    for handler in added:
        logger.addHandler(handler)
    logger.setLevel(min(RUN_LOG_LEVEL, before))

    def restore() -> None:
        level, propagate, handlers = saved
        for handler in added:
            logger.removeHandler(handler)
        for handler, handler_level in handlers:
            handler.setLevel(handler_level)
        logger.setLevel(level)
        logger.propagate = propagate

    return restore


@contextlib.contextmanager
def textrnn_logs_in_prefect() -> Iterator[None]:
    """While the block runs (a flow's body), textrnn's lines at INFO and above also go to the log of the
    Prefect run they are written in; terminals and other handlers get what they got before. Nested and
    concurrent flows in one process share the set-up, which is undone when the last one leaves."""
    global _holders, _restore
    with _lock:
        if _holders == 0:
            _restore = _install()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _restore is not None:
                _restore()
                _restore = None
