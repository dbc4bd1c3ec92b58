"""CLI subcommand: draw (being written)."""


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
