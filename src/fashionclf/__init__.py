"""fashionclf: train, evaluate and deploy clothing-image classifiers on Fashion-MNIST."""

__version__ = "0.1.0"
