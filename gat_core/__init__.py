"""gat_core: the GAT method as a plain PyTorch library (no Ray, no MLflow).

Importing the package is cheap; torch is loaded by the modules that need it.
"""

__version__ = "0.1.0"
