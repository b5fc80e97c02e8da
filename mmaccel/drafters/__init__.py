"""Draft strategies: one small class each."""

from mmaccel.drafters.base import Draft, DraftContext, Drafter, NoDraft
from mmaccel.drafters.jacobi import INITS, JacobiDrafter
from mmaccel.drafters.lookahead import LookaheadDrafter
from mmaccel.drafters.prompt_lookup import PromptLookupDrafter

__all__ = [
    "INITS",
    "Draft",
    "DraftContext",
    "Drafter",
    "JacobiDrafter",
    "LookaheadDrafter",
    "NoDraft",
    "PromptLookupDrafter",
]
