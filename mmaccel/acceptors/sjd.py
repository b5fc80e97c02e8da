"""Speculative Jacobi Decoding acceptance (Teng et al. 2024, arXiv 2410.01699).

The Jacobi window's drafts are verified with the speculative-sampling rule, where q is the
distribution that produced each draft in the previous Jacobi iteration:

    keep x_i while  u_i < min(1, p_i(x_i) / q_i(x_i)),   else  next ~ norm(max(0, p_n - q_n)).

A freshly initialised draft (random or copied from a neighbour) is deterministic given the
past, so its q is one-hot at the draft: it is kept with probability p(x) and the residual is
p with x removed. Either way the output is distributed exactly as plain sampling.
"""

from __future__ import annotations

from mmaccel.acceptors.speculative import SpeculativeSampling


class SJDAcceptor(SpeculativeSampling):
    name = "sjd"
