"""The exceptions the command line turns into one clear line and an exit code: bad input (2), a
failed self-check (1) and a signal outside the training loop (128 + the signal number)."""


class HarnessError(Exception):
    """Bad input from the user: a recipe key, a value, a missing file.

    The message is one line that names the file, key or value and says what is allowed.
    Commands catch it, print ``error: <message>`` and exit with code 2; no traceback.
    """


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived outside the training loop (while starting up, testing or writing
    reports); inside it the Trainer finishes the step and saves instead. `hint` says how to go on."""

    def __init__(self, signum: int, hint: str | None = None) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.hint = hint


class CheckFailed(Exception):
    """A command's check of its own result failed: the input was valid, the result is not.

    E.g. an exported model that does not reproduce the PyTorch model within the stated tolerance.
    The message is one line saying what was measured against what; commands print
    ``error: <message>`` and exit with code 1.
    """
