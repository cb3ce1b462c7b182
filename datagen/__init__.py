"""Data generation: the shipped synthetic datasets, their physics models, checks and data card.

`electrode_process` (lab campaign of coated sheets through a slurry → coating → calendering model),
`gdl_microstructure` (stochastic fibre microstructures and their geometric tortuosity), `generate` (write, check,
data card), `calibration` (how hard the electrode data is for a random forest on grouped splits), `cli` (the
`cellmfg data` commands). Heavy libraries are imported by the modules that need them, never here.
"""
