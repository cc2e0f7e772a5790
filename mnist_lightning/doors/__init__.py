"""The doors: what comes from other people or the network, each through one module that bounds
it and turns any failure, whatever its exception, into one line (a UserError) or, for a
request, a 4xx (docs/trust.md):

- checkpoints.py  checkpoints handed to evaluate, predict, export and serve: read as data
                  (weights_only), bounded, and checked against the settings before any build
- images.py       image files and uploads, decoded within a budget
- requests.py     HTTP requests to the server, read by the request gate (serve/gate.py)
- the MNIST files, downloaded or local: data/idx_files.py (their headers and MD5s) and
                  data/mnist_files.py (a bounded gunzip, downloads with a timeout)

The command line is the user's and is trusted, but typed once (each command's settings:
../settings.py), so that a bad value is one line before any work, and a checkpoint's settings
are checked against the same types:

- settings.py     every setting, typed (pydantic, strict); with
  ranges.py       each class's types and ranges, and
  problems.py     pydantic's errors as one line per setting

Your own run and sweep folders are not a door: folders.py guards them against accidents.
Nothing read through a door names code, chooses the data or a download source, or leads to a
write or delete outside its folder. Each door has a property-based test (tests/test_doors.py;
the requests' in tests/test_serve.py) that throws generated hostile input at it.
"""
