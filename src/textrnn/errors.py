"""The one base class for errors a user can fix; the CLI prints them as a single line."""


class TextrnnError(Exception):
    """A problem with the user's input, config or environment, stated in one line."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, or SIGINT as KeyboardInterrupt's peer): not a bug and not
    the user's input, so a BaseException that `except Exception` blocks let through. Run context managers
    end their MLflow run KILLED on it; the CLI exits 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
