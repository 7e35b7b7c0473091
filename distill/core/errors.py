"""The one exception type users see: a message that names the file or setting and what to do."""


class RSDistillError(Exception):
    """A problem with the user's input or environment, explained in plain words.

    The command line prints the message alone (no traceback) and exits with status 2.
    """
