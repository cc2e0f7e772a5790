"""MNIST on disk and in memory: the IDX files (mnist_files.py), MNISTDataModule (datamodule.py),
augmentation on the device (augment.py), and the preprocessing that makes a user's image look
like an MNIST digit (preprocess.py)."""

IMAGE_SIZE = 28  # MNIST's digits are 28x28 grey images
NUM_CLASSES = 10  # of the digits 0-9
