"""Recipe design and experiment suggestions: the inverse of /predict.

- `search`: recipes that reach wanted properties (`Designer`, POST /design/*, `cellmfg design`).
- `schemas`: the design requests and answers.
- `suggest`: the next experiments to run, by the ensemble's spread (`Suggester`, POST /suggest/*).
- `suggest_schemas`: the suggestion requests and answers.
"""
