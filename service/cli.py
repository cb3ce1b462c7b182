"""The service's commands for the `cellmfg` console (cellmfg_cli), one job per module in `service.commands`, and
the process `cellmfg serve` execs into (`python -m service.cli serve ...`: BentoML's own command line with a metrics
directory of its own, `service.commands.serve.bentoml_serve`).
"""

from __future__ import annotations

import sys

from service.commands.design import design
from service.commands.ledger import ledger_app
from service.commands.offline import offline_predictor, offline_settings
from service.commands.predict import predict
from service.commands.serve import bentoml_serve, check_source, serve, server_command, server_environment
from service.commands.suggest import suggest

__all__ = ["bentoml_serve", "check_source", "design", "ledger_app", "offline_predictor", "offline_settings",
           "predict", "serve", "server_command", "server_environment", "suggest"]

if __name__ == "__main__":
    bentoml_serve(sys.argv[1:])
