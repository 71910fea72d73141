"""fedcredit: privacy-preserving federated joint modelling for credit risk."""

__version__ = "0.1.0"
