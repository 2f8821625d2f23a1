"""Small, seeded experiments on real data that ships with a package (scikit-learn's digits).

``data`` loads and splits the data, ``models`` builds the networks with or without a
normalization layer, ``train`` runs a seeded training loop and records its history.
"""
from .data import Split, batches, load_digits_split
from .models import NORMS, make_norm, mlp, small_cnn
from .train import History, accuracy, train

__all__ = ["NORMS", "History", "Split", "accuracy", "batches", "load_digits_split",
           "make_norm", "mlp", "small_cnn", "train"]
