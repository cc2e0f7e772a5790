"""The doors: every way outside data comes in, each through one module (the two largest, the
command line and the folders, through three small ones, one concept each).

What a user types (the command line, the environment) is trusted; every file read back is data.
Each door types what it reads, bounds its size and depth, refuses links, and turns any failure,
whatever its exception, into one line (a UserError) or, for a request, a 4xx:

- settings.py     the command line and every setting, typed once (pydantic, strict); with
  problems.py     pydantic's errors as one line per setting, and
  options.py      each command's own options
- folders.py      run and sweep folders: the lock, where a command may write, which checkpoint a
                  run folder stands for; with
  files.py        every file read back, bounded, links refused, and
  record.py       a run's record (run_config.yaml) and the check that a resume may continue it
- checkpoints.py  checkpoints, read as data and checked against the settings before any build
- images.py       image files and uploads, decoded within a budget
- requests.py     HTTP requests to the server (the request gate)
- a stored Optuna study: hydra_plugins/mnist_lightning_sweepers/resumable_optuna.py
  (Hydra loads its sweeper from there)
- a local MLflow store's experiment, where it keeps its files: training/tracking.py
  (check_tracking_stores, beside the rest of MLflow)

Nothing read through a door names code, chooses the data or a download source, replaces a part
of the composed config, or leads to a write or delete outside its folder. Each door has a
property-based test (tests/test_doors.py; the requests' in tests/test_serve.py) that throws
generated hostile input at it.
"""
