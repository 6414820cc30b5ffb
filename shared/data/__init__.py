"""Data layer: loaders, fetching, validation, synthetic data, per-user splits and client topologies."""

from .csv_loader import load_csv
from .errors import DataError
from .fetch import FetchError, fetch_ml100k
from .movielens import load_ml1m, load_ml100k, load_ml_latest, load_movielens
from .split import UserRatings, split_one_user, split_users
from .synthetic import make_synthetic
from .topology import partition_users
from .types import Catalog, LoadReport, RatingsData
from .validate import ValidationResult, validate_path

__all__ = [
    "Catalog",
    "DataError",
    "FetchError",
    "LoadReport",
    "RatingsData",
    "UserRatings",
    "ValidationResult",
    "fetch_ml100k",
    "load_csv",
    "load_ml100k",
    "load_ml1m",
    "load_ml_latest",
    "load_movielens",
    "make_synthetic",
    "partition_users",
    "split_one_user",
    "split_users",
    "validate_path",
]
