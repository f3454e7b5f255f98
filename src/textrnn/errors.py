"""The one base class for errors a user can fix; the CLI prints them as a single line."""


class TextrnnError(Exception):
    """A problem with the user's input, config or environment, stated in one line."""
