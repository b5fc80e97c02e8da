"""Acceptance rules: one small class each, sharing ``Acceptance`` as their output."""

from mmaccel.acceptors.base import Acceptance, Acceptor
from mmaccel.acceptors.exact import ExactMatch
from mmaccel.acceptors.sjd import SJDAcceptor
from mmaccel.acceptors.speculative import SpeculativeSampling

__all__ = ["Acceptance", "Acceptor", "ExactMatch", "SJDAcceptor", "SpeculativeSampling"]
