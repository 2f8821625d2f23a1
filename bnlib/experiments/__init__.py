"""Small, seeded experiments on real data that ships with a package (scikit-learn's digits).

``data`` loads the train/validation/test split, ``init`` initializes weights for the
activation that follows them, ``models`` builds the networks with or without a
normalization layer, ``train`` runs a seeded training loop and records its history, and
``protocol`` runs fair comparisons (own learning rate per arm chosen on validation, seeds,
95% intervals).
"""
from .data import Split, batches, load_digits_split
from .init import init_for_activation
from .models import NORMS, make_norm, mlp, small_cnn
from .protocol import (LR_GRID, Arm, Comparison, EdgeOfGridError, Interval, LrChoice,
                       ResolutionError, Results, choose_lr, interval, ratio_interval, run,
                       seeds_needed, steps_to_target)
from .train import History, accuracy, train

__all__ = ["LR_GRID", "NORMS", "Arm", "Comparison", "EdgeOfGridError", "History", "Interval",
           "LrChoice", "ResolutionError", "Results", "Split", "accuracy", "batches",
           "choose_lr", "init_for_activation", "interval", "load_digits_split", "make_norm",
           "mlp", "ratio_interval", "run", "seeds_needed", "small_cnn", "steps_to_target",
           "train"]
