"""`python -m mnist_lightning.serve`: the HTTP API (api.py) and the drawing page (draw.html)."""
