"""CLI subcommands for datasets: data, convert-imageset, compute-mean (being written)."""


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
