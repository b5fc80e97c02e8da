"""mmaccel.kernels: the Triton acceptance kernels against their pure-torch references.

The kernels run on CPU under the Triton interpreter in a subprocess (``TRITON_INTERPRET=1``
must be set before triton is imported, and must not leak into the other test files); they
are compiled for a CUDA target (no GPU needed) to check what the interpreter cannot see; the
references are checked in-process against ``mmaccel.acceptors`` (same random stream, same
law). Nothing here times anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmaccel.kernels import lantern as lantern_kernels
from mmaccel.kernels import speculative as spec_kernels
from mmaccel.kernels.lantern import neighbour_mass, neighbour_mass_reference, used_from_count
from mmaccel.kernels.speculative import speculative_accept, speculative_accept_reference, triton_available

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _interpret(tmp_path: Path, *args: str) -> str:
    """Run ``mmaccel.kernels.check`` under the Triton interpreter in a fresh process."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    proc = subprocess.run([sys.executable, "-m", "mmaccel.kernels.check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


@needs_triton
def test_speculative_kernel_matches_reference_under_interpreter(tmp_path):
    # every kind (independent / SJD-like / one-hot / q == p / q(x) = 0 / ties / half / strided)
    # x K in {0, 1, 4, 16}, V in {16, 1000 (4 tiles), 16384 (8 tiles)}, B in 1..6
    out = _interpret(tmp_path, "speculative", "--quick")
    assert "speculative: 32 cases, 0 mismatches" in out, out


@needs_triton
def test_lantern_kernel_matches_reference_under_interpreter(tmp_path):
    out = _interpret(tmp_path, "lantern")
    assert "lantern: 24 cases, 0 mismatches" in out, out


def _cuda_compile(fn, signature: dict[str, str], constexprs: dict[str, int | bool]):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    runtime_args = [name for name in fn.arg_names if name not in constexprs]
    sig = dict(zip(runtime_args, signature.values(), strict=True)) | dict.fromkeys(constexprs, "constexpr")
    return compile(ASTSource(fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 80, 32))


@needs_triton
def test_kernels_compile_for_a_cuda_target(tmp_path, monkeypatch):
    # the interpreter runs numpy: it cannot see GPU-only typing or lowering. Compile for sm_80
    # (triton's bundled LLVM + ptxas; no GPU needed) and check the residual key uses IEEE division
    # (Triton's default fp32 "/" lowers to the approximate div.full.f32, which torch does not match)
    pytest.importorskip("triton.backends.nvidia")
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted functions in this process")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    i32 = "i32"
    spec = {"p": "*fp32", "q": "*fp32", "x": "*i64", "u": "*fp32", "e": "*fp32", "n": "*i64", "tok": "*i64",
            **{f"s{i}": i32 for i in range(14)}}  # fmt: skip
    kernel = _cuda_compile(spec_kernels._speculative_accept_kernel, spec, {"BLOCK_K": 16, "BLOCK_V": 2048})
    assert "div.rn.f32" in kernel.asm["ptx"] and "div.full.f32" not in kernel.asm["ptx"]
    assert kernel.asm["cubin"]
    half = spec | {"p": "*bf16", "q": "*fp16", "x": "*i32"}
    assert _cuda_compile(spec_kernels._speculative_accept_kernel, half, {"BLOCK_K": 1, "BLOCK_V": 256}).asm[
        "cubin"
    ]
    lan = {"p": "*fp32", "nbr": "*i64", "budget": "*fp32", "m": "*fp32", "n_used": "*i32", "V": i32, "k": i32,
           "scalar": "fp32", **{f"s{i}": i32 for i in range(6)}}  # fmt: skip
    for is_tensor in (False, True):
        consts = {"BUDGET_IS_TENSOR": is_tensor, "BLOCK_V": 128, "BLOCK_J": 32}
        assert _cuda_compile(lantern_kernels._neighbour_mass_kernel, lan, consts).asm["cubin"]


def _sjd_like(B: int, K: int, V: int, g: torch.Generator):
    logits_BTV = torch.randn(B, K + 1, V, generator=g) * 2
    p_BTV = logits_BTV.softmax(-1)
    q_BKV = (logits_BTV[:, :K] + 0.7 * torch.randn(B, K, V, generator=g)).softmax(-1)
    drafts_BK = torch.multinomial(q_BKV.reshape(-1, V), 1, generator=g).reshape(B, K)
    return p_BTV, q_BKV, drafts_BK


def _acceptor_randomness(B: int, K: int, V: int, seed: int):
    """(what SpeculativeSampling.accept takes, u_BK, e_BV) holding the same random numbers.

    ``mmaccel.sampling`` is moving from a generator passed to ``accept`` (u = rand(B, K), then
    E = exponential_(B, V)) to ``Draws`` of uniforms (E = exponential(U)); both are handled.
    """
    import mmaccel.sampling as sampling

    g = torch.Generator().manual_seed(seed)
    if hasattr(sampling, "Draws"):
        u_BK, ue_BV = torch.rand(B, K, generator=g), torch.rand(B, V, generator=g)
        return sampling.Draws({"u": u_BK, "e": ue_BV}), u_BK, sampling.exponential(ue_BV)
    u_BK = torch.rand((B, K), generator=g)
    e_BV = torch.empty(B, V).exponential_(generator=g)
    return torch.Generator().manual_seed(seed), u_BK, e_BV


def test_reference_consumes_the_same_randomness_as_speculative_sampling():
    from mmaccel.acceptors.speculative import SpeculativeSampling

    tokens_differ, rows = 0, 0
    for seed in range(12):
        B, K, V = 48, (0, 1, 4, 8)[seed % 4], 50
        p_BTV, q_BKV, drafts_BK = _sjd_like(B, K, V, torch.Generator().manual_seed(seed))
        draws, u_BK, e_BV = _acceptor_randomness(B, K, V, 100 + seed)
        want = SpeculativeSampling().accept(drafts_BK, q_BKV, p_BTV, draws)
        n_B, tok_B = speculative_accept_reference(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
        assert torch.equal(n_B, want.num_accepted_B)
        tokens_differ += int((tok_B != want.next_token_B).sum())
        rows += B
    # the acceptor normalises the residual before dividing by E; that rounding may flip a near tie
    assert tokens_differ <= rows // 200


def test_reference_law_is_the_target():
    # lossless: the first emitted token ~ p_0, and after an accepted x_0 the second ~ p_1 (chi-square)
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(0)
    N, K = 60_000, 2
    p_TV = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.0], [0.05, 0.0, 0.5, 0.25, 0.2], [0.2] * 5])
    q_KV = torch.tensor([[0.1, 0.0, 0.3, 0.3, 0.3], [0.3, 0.1, 0.2, 0.2, 0.2]])
    p_BTV, q_BKV = p_TV.expand(N, -1, -1), q_KV.expand(N, -1, -1)
    drafts_BK = torch.multinomial(q_BKV.reshape(-1, 5), 1, generator=g).reshape(N, K)
    u_BK, e_BV = torch.rand(N, K, generator=g), torch.empty(N, 5).exponential_(generator=g)
    n_B, tok_B = speculative_accept_reference(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    first_B = torch.where(n_B >= 1, drafts_BK[:, 0], tok_B)
    second_B = torch.where(n_B >= 2, drafts_BK[:, 1], tok_B)[n_B >= 1]
    for emitted_B, p_V in ((first_B, p_TV[0]), (second_B, p_TV[1])):
        counts_V = torch.bincount(emitted_B, minlength=5).double()
        support = p_V > 0
        assert counts_V[~support].sum() == 0
        expected = p_V[support].double() / p_V[support].double().sum() * counts_V.sum()
        assert chisquare(counts_V[support].numpy(), expected.numpy()).pvalue > 1e-4


def test_reference_edge_rules():
    V = 6
    p_BTV = torch.tensor([[[0.0, 0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5, 0.5, 0.0]]]).repeat(4, 1, 1)
    q_BKV = torch.zeros(4, 1, V)
    q_BKV[0, 0, 1] = 0.0  # q(x) = 0, p(x) > 0: kept
    q_BKV[1, 0, 0] = 1.0  # p(x) = 0: rejected, residual = p_0
    q_BKV[2] = p_BTV[2, :1]  # q == p and x has p(x) = 0: rejected, residual all zero -> draw from p_0
    q_BKV[3, 0, 5] = 1.0  # p(x) = q(x) = 0 ... with q elsewhere: rejected
    drafts_BK = torch.tensor([[1], [0], [0], [3]])
    u_BK = torch.full((4, 1), 0.999)
    e_BV = torch.ones(4, V)  # every key tied: the lowest index of the support wins
    n_B, tok_B = speculative_accept_reference(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    assert n_B.tolist() == [1, 0, 0, 0]
    assert tok_B.tolist() == [3, 1, 1, 1]
    e_BV[1, 2] = 0.0  # a zero E makes that residual entry +inf: it wins
    e_BV[2, 0] = 0.0  # ... but never a zero-mass entry (0 / 0 would be NaN, which argmax picks)
    assert speculative_accept_reference(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)[1].tolist() == [3, 2, 1, 1]
    # K = 0 is plain sampling: argmax(p_0 / E)
    e0_BV = torch.empty(4, V).exponential_(generator=torch.Generator().manual_seed(0))
    n0_B, tok0_B = speculative_accept_reference(
        p_BTV[:, 1:], q_BKV[:, :0], drafts_BK[:, :0], u_BK[:, :0], e0_BV
    )
    assert n0_B.tolist() == [0] * 4 and torch.equal(tok0_B, (p_BTV[:, 1] / e0_BV).argmax(-1))


def _same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_dispatchers_use_the_reference_on_cpu(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Triton path must not run on CPU tensors")

    monkeypatch.setattr(spec_kernels, "speculative_accept_triton", refuse)
    monkeypatch.setattr(lantern_kernels, "neighbour_mass_triton", refuse)
    g = torch.Generator().manual_seed(0)
    p_BTV, q_BKV, drafts_BK = _sjd_like(3, 4, 20, g)
    u_BK, e_BV = torch.rand(3, 4, generator=g), torch.empty(3, 20).exponential_(generator=g)
    args = (p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    assert _same(speculative_accept(*args), speculative_accept_reference(*args))
    nbr_Vk = torch.randint(-1, 20, (20, 3), generator=g)
    assert _same(neighbour_mass(p_BTV, nbr_Vk, 0.1), neighbour_mass_reference(p_BTV, nbr_Vk, 0.1))


def test_shapes_are_checked():
    p_BTV, q_BKV, drafts_BK = _sjd_like(2, 3, 10, torch.Generator().manual_seed(0))
    u_BK, e_BV = torch.rand(2, 3), torch.ones(2, 10)
    with pytest.raises(ValueError, match="e_BV"):
        speculative_accept_reference(p_BTV, q_BKV, drafts_BK, u_BK, e_BV[:, :9])
    with pytest.raises(ValueError, match="q_BKV"):
        speculative_accept_reference(p_BTV, q_BKV[:, :2], drafts_BK, u_BK, e_BV)
    with pytest.raises(ValueError, match="neighbours_VK"):
        neighbour_mass_reference(p_BTV, torch.zeros(9, 2, dtype=torch.long), 0.1)


@pytest.mark.parametrize("mode", ["delta", "lambda"])
def test_neighbour_mass_reference_is_the_lantern_rule(mode):
    # exactly LanternAcceptor._neighbour_mass applied as relaxed_target applies it
    from mmaccel.acceptors.lantern import LanternAcceptor, neighbour_table

    g = torch.Generator().manual_seed(1)
    nbr_Vk = neighbour_table(torch.randn(30, 4, generator=g), 6, offset=2, vocab_size=34)  # -1 rows too
    p_BKV = (torch.randn(3, 4, 34, generator=g) * 3).softmax(-1)
    acc = (
        LanternAcceptor(nbr_Vk, delta=0.05)
        if mode == "delta"
        else LanternAcceptor(nbr_Vk, delta=None, lam=3.0)
    )
    p_nbr_BKVk = p_BKV[..., nbr_Vk.clamp(min=0)] * (nbr_Vk >= 0)
    used_want, m_want = acc._neighbour_mass(p_nbr_BKVk, p_BKV)
    budget = 0.05 if mode == "delta" else (3.0 - 1) * p_BKV[..., None]
    used_BKVk, m_BKV = neighbour_mass_reference(p_BKV, nbr_Vk, budget)
    assert torch.equal(used_BKVk, used_want) and torch.equal(m_BKV, m_want)
    assert used_BKVk.any() and not used_BKVk.all()
    # p >= 0, so `used` is a prefix along k: its length is the whole of it (the kernel's form)
    assert torch.equal(used_from_count(used_BKVk.sum(-1), nbr_Vk.shape[1]), used_BKVk)


@pytest.mark.cuda
@needs_triton
def test_cuda_dispatch_runs_triton_and_agrees(monkeypatch):
    from mmaccel.kernels.check import check_lantern, check_speculative

    assert check_speculative("cuda", seeds=2) == (2 * 96, [])
    assert check_lantern("cuda") == (24, [])
    calls = []
    for module, name in (
        (spec_kernels, "speculative_accept_triton"),
        (lantern_kernels, "neighbour_mass_triton"),
    ):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **kw: calls.append(_real) or _real(*a, **kw))
    p_BTV, q_BKV, drafts_BK = (t.cuda() for t in _sjd_like(4, 4, 16384, torch.Generator().manual_seed(0)))
    u_BK, e_BV = torch.rand(4, 4, device="cuda"), torch.empty(4, 16384, device="cuda").exponential_()
    args = (p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    assert _same(speculative_accept(*args), speculative_accept_reference(*args))
    nbr_Vk = torch.randint(-1, 16384, (16384, 8), device="cuda")
    used_BKVk, m_BKV = neighbour_mass(p_BTV[:, :4], nbr_Vk, 0.1)
    assert used_BKVk.shape == (4, 4, 16384, 8) and m_BKV.dtype == torch.float32
    assert len(calls) == 2
