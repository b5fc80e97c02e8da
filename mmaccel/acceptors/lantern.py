"""LANTERN relaxed acceptance (Jang et al. 2024, arXiv 2410.03355; LANTERN++ arXiv 2502.06352).

Image tokens whose codebook vectors lie close together decode to nearly the same patch, so
the target may lend a draft the probability of its latent neighbours. For a draft x the
paper's relaxed target moves the mass of x's nearest neighbours onto x, taken in order of
distance while the moved mass m(x) stays within budget:

    delta mode:            m(x) = sum_{y in B(x)} p(y) <= delta        (total variation <= delta)
    multiplicative mode:   p(x) + m(x) <= lambda * p(x)                 (LANTERN++)

Applied draft by draft with a random q, that rule is no longer bounded (each x brings its
own target; measured TV up to delta + 0.5 on random p, q). We therefore build ONE relaxed
target per position, p_tilde, and run exact speculative sampling against it:

    gain      e(x)   = max(0, min(q(x), p(x) + m(x)) - p(x))   (no more than the draft can use)
    scaled    g(x)   = s * c * e(x),  s = min(1, delta / sum_x e(x))   (s = 1 in lambda mode)
    p_tilde   = p + g - D,  D(y) = p(y) * sum_{x: y in B(x)} g(x) / m(x)   (taken from B(x))

where c <= 1 shrinks all gains so that no neighbour gives more than it has. Then keep x with
probability min(1, p_tilde(x) / q(x)) and on rejection draw from norm(max(0, p_tilde - q)),
so each step samples p_tilde exactly, with TV(p_tilde, p) <= sum g <= delta (or
p_tilde <= lambda * p pointwise). For a deterministic draft (one-hot q, every new Jacobi
slot) this is exactly the paper's rule: p_tilde(x) = p(x) + m(x), the used neighbours
drop out of the residual. With delta = 0 (or lambda = 1) p_tilde = p and this is ``sjd``.

``lantern_rule="paper"`` applies the published rule instead: each draft x is verified
against its own target (x gains m(x), its used neighbours drop to 0) and a rejection draws
from norm(max(0, p_tilde_x - q)). Exact for a deterministic draft, but with a random draft
(an SJD redraw) the step's law is a mixture over x that the delta bound does not cover;
it accepts far more (measured on the default model: 0.67x the forward passes of sjd at
delta = 0.1, against 0.97x for the bounded rule), which is where the paper's speed-ups
come from. Its measured TV is reported by the tests and benchmarks, not promised.

Owns: the neighbour table of a codebook (cached per codebook tensor) and the rule.
Must never: sync with the host inside ``accept``.
"""

from __future__ import annotations

import weakref

import torch

from mmaccel.acceptors.base import Acceptance, at_index, leading_true, token_prob
from mmaccel.acceptors.speculative import SpeculativeSampling, _triton
from mmaccel.sampling import normalize_residual, sample_with

# id(codebook) -> (weak reference to it, {key: table}); tensors cannot be dict keys (== is elementwise)
RULES = ("bounded", "paper")
_TABLES: dict[int, tuple[weakref.ref, dict]] = {}


def neighbour_table(
    codebook_VD: torch.Tensor, k: int, offset: int = 0, vocab_size: int | None = None
) -> torch.Tensor:
    """Indices ``[vocab_size, k]`` of each token's ``k`` nearest codebook entries (closest first).

    ``codebook_VD`` holds the vectors of image tokens ``offset .. offset + V - 1`` in the
    latent space the model's tokenizer quantizes in (pass normalised codes where it
    normalises). Tokens outside that range get -1 (no neighbours). Cached per codebook tensor.
    """
    V = codebook_VD.shape[0]
    vocab_size = vocab_size if vocab_size is not None else offset + V
    if not 1 <= k <= V - 1:
        raise ValueError(f"lantern_k must be between 1 and {V - 1} (codebook of {V} entries), got {k}")
    key = (k, offset, vocab_size, codebook_VD.device)
    ref, cached = _TABLES.get(id(codebook_VD), (None, {}))
    if ref is None or ref() is not codebook_VD:
        cached, ident = {}, id(codebook_VD)
        _TABLES[ident] = (weakref.ref(codebook_VD, lambda _: _TABLES.pop(ident, None)), cached)
    if key not in cached:
        with torch.no_grad():
            dist_VV = torch.cdist(codebook_VD.float(), codebook_VD.float())
            dist_VV.fill_diagonal_(float("inf"))
            near_VK = dist_VV.topk(k, dim=-1, largest=False).indices + offset
        table = torch.full((vocab_size, k), -1, dtype=torch.long, device=codebook_VD.device)
        table[offset : offset + V] = near_VK
        cached[key] = table
    return cached[key]


class LanternAcceptor(SpeculativeSampling):
    """Speculative sampling against the latent-relaxed target ``p_tilde`` (module docstring)."""

    name = "lantern"

    def __init__(
        self,
        neighbours_VK: torch.Tensor,
        delta: float | None = 0.1,
        lam: float | None = None,
        rule: str = "bounded",
    ) -> None:
        if (delta is None) == (lam is None):
            raise ValueError("give exactly one of lantern_delta and lantern_lambda")
        if rule not in RULES:
            raise ValueError(f"lantern_rule must be one of {', '.join(RULES)}; got {rule!r}")
        self.neighbours_VK, self.delta, self.lam, self.rule = neighbours_VK, delta, lam, rule

    def _neighbour_mass(
        self, p_nbr_BKVK: torch.Tensor, p_BKV: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which neighbours are used (nearest first, within budget) and their total mass."""
        budget = (self.lam - 1) * p_BKV[..., None] if self.lam is not None else self.delta
        if p_nbr_BKVK.is_cuda and p_nbr_BKVK.dim() == 4 and _triton():  # fused gather + cumsum + mass
            from mmaccel.kernels.lantern import neighbour_mass_triton, used_from_count

            n_used_BKV, m_BKV = neighbour_mass_triton(p_BKV, self.neighbours_VK, budget)
            return used_from_count(n_used_BKV, self.neighbours_VK.shape[1]), m_BKV.to(p_BKV.dtype)
        used = p_nbr_BKVK.cumsum(-1) <= budget
        return used, (p_nbr_BKVK * used).sum(-1)

    def paper_target(self, p_BKV: torch.Tensor, drafts_BK: torch.Tensor) -> torch.Tensor:
        """The published per-draft target: x gains its used neighbours' mass, they drop to 0."""
        nbr_BKk = self.neighbours_VK[drafts_BK]
        valid_BKk = nbr_BKk >= 0
        p_nbr_BKk = p_BKV.gather(-1, nbr_BKk.clamp(min=0)) * valid_BKk
        used_BKk, m_BK = self._neighbour_mass(p_nbr_BKk, p_BKV.gather(-1, drafts_BK[..., None])[..., 0])
        pt_BKV = p_BKV.scatter(-1, nbr_BKk.clamp(min=0), torch.where(used_BKk & valid_BKk, 0.0, p_nbr_BKk))
        return pt_BKV.scatter_add(-1, drafts_BK[..., None], m_BK[..., None])

    def relaxed_target(self, p_BKV: torch.Tensor, q_BKV: torch.Tensor) -> torch.Tensor:
        """``p_tilde`` for each draft position ([B, K, V])."""
        valid_VK = self.neighbours_VK >= 0
        idx_VK = self.neighbours_VK.clamp(min=0)
        p_nbr_BKVK = p_BKV[..., idx_VK] * valid_VK  # p of x's j-th nearest neighbour
        used_BKVK, m_BKV = self._neighbour_mass(p_nbr_BKVK, p_BKV)
        e_BKV = (torch.minimum(q_BKV, p_BKV + m_BKV) - p_BKV).clamp_min(0)
        if self.lam is None:  # all gains together stay within the total-variation budget
            e_BKV = e_BKV * (self.delta / e_BKV.sum(-1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
        frac_BKV = e_BKV / m_BKV.clamp_min(1e-30)  # share of each used neighbour's mass taken
        take_BKVK = frac_BKV[..., None] * used_BKVK
        share_BKV = torch.zeros_like(p_BKV).scatter_add_(-1, idx_VK.reshape(-1).expand(*p_BKV.shape[:2], -1),
                                                          take_BKVK.flatten(-2))  # fmt: skip
        # no neighbour may give more than it has: shrink every gain by the worst overdraw
        c_BK1 = 1 / share_BKV.amax(-1, keepdim=True).clamp_min(1.0)
        return p_BKV + c_BK1 * (e_BKV - p_BKV * share_BKV)

    def accept(self, drafts_BK, q_BKV, p_BTV, draws) -> Acceptance:
        r = self._draws(draws, drafts_BK, p_BTV)
        K = drafts_BK.shape[1]
        if self.rule == "paper":
            pt_BKV = self.paper_target(p_BTV[:, :K], drafts_BK)
        else:
            pt_BKV = self.relaxed_target(p_BTV[:, :K], q_BKV).clamp_min(0)
        pt_BTV = torch.cat([pt_BKV, p_BTV[:, K:]], dim=1)  # the bonus position has no draft
        n_B = leading_true(r["u"] * token_prob(q_BKV, drafts_BK) < token_prob(pt_BKV, drafts_BK))
        q_pad_BTV = torch.cat([q_BKV, torch.zeros_like(p_BTV[:, :1])], dim=1)
        pt_n, q_n = at_index(pt_BTV, n_B), at_index(q_pad_BTV, n_B)
        p_prime = normalize_residual((pt_n - q_n).clamp_min(0), fallback=pt_n)
        return Acceptance(n_B, sample_with(p_prime, r["e"]))
