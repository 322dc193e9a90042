"""distcl: distributed large-batch contrastive learning on Ray Train, FFCV and MLflow."""

__version__ = "0.1.0"
