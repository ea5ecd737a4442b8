"""ScoreService: compute scores from input values, store them, list them as the admin view did."""

from quartet.score.v1 import score_service_pb2, score_service_pb2_grpc
from quartet.server.registration import Service
from quartet.server.score.service import ScoreServicer, compute_score
from quartet.storage import scores

SERVICE = Service(
    descriptor=score_service_pb2.DESCRIPTOR.services_by_name["ScoreService"],
    servicer=lambda provided: ScoreServicer(provided.runner, provided.score_writer),
    add_to_server=score_service_pb2_grpc.add_ScoreServiceServicer_to_server,
    needs_database=True,
    models=(scores.Score,),
)

__all__ = ["SERVICE", "ScoreServicer", "compute_score"]
