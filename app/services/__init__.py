"""Business operations shared by views, tasks and the CLI: one module per concern."""
