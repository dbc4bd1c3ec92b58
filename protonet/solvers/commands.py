"""CLI subcommands for training: solve/train, test, plot (being written)."""


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
