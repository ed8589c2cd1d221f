"""The one exception type the command line turns into a single clear line and exit code 2."""


class HarnessError(Exception):
    """Bad input from the user: a recipe key, a value, a missing file.

    The message is one line that names the file, key or value and says what is allowed.
    Commands catch it, print ``error: <message>`` and exit with code 2; no traceback.
    """
