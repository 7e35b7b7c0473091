"""The `rsdistill` command: one module per sub-command, imported only when that command runs."""
