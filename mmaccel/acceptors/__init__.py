"""Acceptance rules: one small class each, sharing ``Acceptance`` as their output."""

from mmaccel.acceptors.base import Acceptance, Acceptor
from mmaccel.acceptors.exact import ExactMatch
from mmaccel.acceptors.lantern import LanternAcceptor, neighbour_table
from mmaccel.acceptors.sjd import SJDAcceptor
from mmaccel.acceptors.speculative import SpeculativeSampling

__all__ = [
    "Acceptance",
    "Acceptor",
    "ExactMatch",
    "LanternAcceptor",
    "SJDAcceptor",
    "SpeculativeSampling",
    "neighbour_table",
]
