"""The one exception type for problems in the user's input.

Anything a user can cause -- a malformed prototxt, an unknown layer type, a
missing data source, a shape mismatch -- raises :class:`ProtonetError` with a
message that names the place (file:line:column, layer name, blob shapes).
The CLI prints the message on one or two lines and exits non-zero; any other
exception type is a bug in protonet.
"""


class ProtonetError(Exception):
    """A user-facing error: bad input, not a bug.

    ``str(err)`` is a complete, self-contained message.
    """
