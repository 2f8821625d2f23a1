"""bnlib: the batch-normalization library behind the bnbook chapters.

``bnlib.numpy`` holds the functional core (forward, two backward passes, a layer and a
numerical-gradient checker); ``bnlib.torch`` holds modules equal to ``torch.nn``.
"""
__version__ = "0.1.0"
