"""CLI subcommands: each parses its arguments and calls the module that does the work."""
