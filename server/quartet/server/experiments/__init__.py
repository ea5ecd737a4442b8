"""ExperimentService: the experiment data set's import (CSV files over a stream) and report."""

from quartet.experiments.v1 import experiment_service_pb2, experiment_service_pb2_grpc
from quartet.server.experiments.service import ExperimentServicer
from quartet.server.registration import Service
from quartet.storage import experiment_history, experiments

SERVICE = Service(
    descriptor=experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"],
    servicer=lambda provided: ExperimentServicer(provided.runner),
    add_to_server=experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server,
    needs_database=True,
    models=(
        experiments.ExperimentUser,
        experiments.Compound,
        experiments.Experiment,
        experiments.ExperimentCompound,
        experiment_history.ImportRecord,
    ),
)

__all__ = ["SERVICE", "ExperimentServicer"]
