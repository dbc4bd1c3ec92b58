"""Descriptor queries that work on every protobuf runtime from 4.21 to 7.x."""


def is_repeated(fd) -> bool:
    """Whether a FieldDescriptor is repeated (``label`` is gone in newer runtimes)."""
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == fd.LABEL_REPEATED
