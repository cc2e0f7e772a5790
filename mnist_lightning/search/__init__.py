"""The Optuna search behind `hparams_search=optuna`: the search space from Hydra's sweep syntax
(space.py), where the study lives (storage.py), and the shared study that its workers ask for
trials (study.py). The Hydra sweeper itself is in hydra_plugins/mnist_lightning_sweepers/, where
Hydra finds its plugins."""
