"""Builders of device files (ActiGraph .agd/CSV, Actiwatch .awd, raw .gt3x, NSRR/MESA CSV) from
minute or raw data: used by the tests and by `scripts/bench_inputs.py`."""
