"""The networks (the lesson's MLP, a small CNN) and MNISTClassifier, the LightningModule."""
