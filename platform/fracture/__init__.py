"""fracture: Ray-distributed VGG16 training and hyperparameter search for fracture detection on X-rays.

Importing the package does nothing: each module imports its heavy dependencies itself.
"""

__version__ = "0.1.0"
