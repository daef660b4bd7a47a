"""Adapters that put dropout_ext into models of other libraries, one module per library
(each imports its library only when called, so the package imports without it):

    dropout_ext.integrations.transformers.apply(model)   # Hugging Face transformers
"""
from . import transformers  # imports no transformers itself: that happens when apply() runs

__all__ = ["transformers"]
