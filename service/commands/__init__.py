"""The service's command-line jobs, one per module: `serve` (start the server), `predict` and `design` (the
service's answers offline, models chosen by one rule in `offline`), `ledger` (measured rows out). `service.cli`
gathers them for the `cellmfg` command; each imports its heavy libraries only when it runs."""
