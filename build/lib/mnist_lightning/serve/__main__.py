"""`python -m mnist_lightning.serve [options]`: see server.py."""

from mnist_lightning.serve.server import main

main()
