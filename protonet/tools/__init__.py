"""Tools behind the CLI: summary, upgrade, ..."""
