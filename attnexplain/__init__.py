"""attnexplain: does this attention explain the prediction?"""
__version__ = "0.1.0"
