"""Random-forest calibration check of the electrode data: grouped (by sheet) vs random-row splits.

Usage: .venv/bin/python scripts/calibrate_electrodes.py [CSV] [--repeats N] [--json]
(the same as `cellmfg data calibrate`; the default CSV is data/graphite.csv).
"""

from __future__ import annotations

import sys

from datagen.cli import data_app

if __name__ == "__main__":
    sys.exit(data_app(["calibrate", *sys.argv[1:]]))
