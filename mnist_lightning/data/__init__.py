"""MNIST on disk and in memory: the IDX files, MNISTDataModule, augmentation on the device, and
the preprocessing that makes a user's image look like an MNIST digit."""
