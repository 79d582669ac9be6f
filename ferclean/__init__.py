"""ferclean: find and fix wrong labels in facial-expression datasets."""

__version__ = "0.1.0"
