"""ExperimentService: the experiment data set's import (CSV files over a stream) and report."""

from quartet.server.experiments.service import ExperimentServicer

__all__ = ["ExperimentServicer"]
