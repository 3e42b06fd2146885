"""The one exception library code raises for user-facing problems."""


class QualityNetError(Exception):
    """A problem the user can fix (bad file, wrong artifact, missing dependency).

    The message names the file or setting at fault and, where there is one, the fix. The
    command-line entry points turn it into one line on stderr and exit code 1; anything
    else is a bug and keeps its traceback.
    """
