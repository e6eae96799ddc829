"""The journey domain as plain, typed, side-effect-free Python.

No Kafka, Redis or Faust here: the map, the event contract, the customer
state and the reducer. The streaming worker only moves data in and out.
"""

from models.errors import JourneyError, MapError
from models.events import REASONS, Rejection, Touchpoint, parse_touchpoint
from models.journey_map import JourneyMap, Move, Stage, load_map, parse_map
from models.reducer import CustomerFold, fold, fold_batch, fold_customer
from models.state import CustomerState, Transition, decode_state, encode_state

__all__ = [
    "REASONS",
    "CustomerFold",
    "CustomerState",
    "JourneyError",
    "JourneyMap",
    "MapError",
    "Move",
    "Rejection",
    "Stage",
    "Touchpoint",
    "Transition",
    "decode_state",
    "encode_state",
    "fold",
    "fold_batch",
    "fold_customer",
    "load_map",
    "parse_map",
    "parse_touchpoint",
]
