"""mae_tutorial: Masked Autoencoders (He et al., 2021) built one idea at a time.

The public API a reader needs lives here; each idea has its own module (see the book's chapters).
"""

from mae_tutorial.config import PRESETS, MAEConfig
from mae_tutorial.data import CIFAR10_MEAN, CIFAR10_STD
from mae_tutorial.masking import random_masking
from mae_tutorial.model import MAEOutput, MaskedAutoencoder, ViTClassifier
from mae_tutorial.patches import patchify, unpatchify

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "PRESETS",
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoencoder",
    "ViTClassifier",
    "patchify",
    "random_masking",
    "unpatchify",
]
__version__ = "0.1.0"
