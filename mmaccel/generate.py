"""``mmaccel.generate``: decode any supported model with any method through one engine.

Owns: argument validation (all of it before any work starts; the checks themselves are in
``mmaccel.inputs``), prompt packing (rows of different lengths, optional CFG doubling), prefill, the outer loop that calls the shared
verify step until every row is done (its single host sync per iteration), and the result.

Must never: decode outside ``verify_step`` or fall back silently to another method.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from mmaccel import draft_length, window
from mmaccel.compiled import MODES, CompiledStep, record_compiled, record_eager, resolve_mode
from mmaccel.draft_length import LengthPolicy, StepClock
from mmaccel.drafters import DraftContext, NoDraft
from mmaccel.hf import StreamFeed, refuse_unsupported
from mmaccel.inputs import check_ids, check_sampling, eos_ids_of, pack, pad_cat, with_defaults
from mmaccel.methods import (
    OPTIONS,
    CoDeConfig,
    CSpDConfig,
    JacobiConfig,
    MethodConfig,
    ZipARConfig,
    build,
    not_masked,
    not_raster,
    resolve_method,
    variable_drafts,
)
from mmaccel.models import CausalLM, as_causal_lm, device_of, weights_id
from mmaccel.sampling import Draws, SamplingConfig, sample
from mmaccel.verify import DecodeState, is_eos, step_draws, step_size, target_probs, verify_step
from mmaccel.zipar import ZipARLayout, ZipARRunner, num_streams, zipar_forward_passes, zipar_step


@dataclass
class GenerateOutput:
    """Result of ``generate``.

    ``sequences``: the input ids followed by ``max_new_tokens`` new tokens per row (rows that
    stop early are padded with ``pad_token_id``). ``num_forward_passes``: target forward
    passes of the call (prefill counts as 1). ``accepted_histogram[k]``: verify steps (summed
    over rows) that emitted k tokens. ``token_forward_index[b, n]``: which target forward
    committed new token ``n`` of row ``b`` (0 = the prefill, 1 = the first verify step, ...);
    the per-step view of what each forward accepted.
    """

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    num_tokens: torch.Tensor
    num_forward_passes: int
    forward_passes_per_row: torch.Tensor
    accepted_histogram: list[int]
    latency_s: float
    method: MethodConfig
    token_forward_index: torch.Tensor | None = None  # [B, max_new_tokens]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_forward(self) -> float:
        """Mean tokens emitted per target forward, per row (prefill included)."""
        return float(self.num_tokens.float().mean() / self.forward_passes_per_row.float().mean())


def generate(
    model: Any,
    input_ids: torch.Tensor,
    method: str | MethodConfig = "ar",
    *,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    streamer: Any = None,
    cfg_scale: float | None = None,
    uncond_input_ids: torch.Tensor | None = None,
    uncond_attention_mask: torch.Tensor | None = None,
    compile: str = "auto",
    progress: bool = False,
    **method_options: Any,
) -> GenerateOutput:
    """Generate ``max_new_tokens`` tokens per row of ``input_ids`` with ``method``.

    Args:
        model: a project ``CausalLM`` or a transformers causal LM (e.g. ``LlamaForCausalLM``).
        input_ids: ``[B, T]`` integer prompt ids. Rows of different lengths: pad them (either
            side) and pass ``attention_mask`` (1 = real token), as with transformers.
        method: ``ar``, ``jacobi``, ``sjd``, ``sjd-coupled`` or a method config. Options such as
            ``window=16``, ``init="random"|"horizontal"|"vertical"``, ``grid_width=`` go in
            ``method_options``.
        max_new_tokens, do_sample, temperature, top_k, top_p: the target distribution
            (``do_sample=False``: greedy; lossless methods then return exactly the greedy tokens).
            Unset, they follow the model's ``generation_config`` as transformers' ``generate`` does
            (a transformers model: greedy unless its config samples; when sampling, the config's
            temperature / top_k / top_p, else transformers' 1.0 / 50 / 1.0); a model without one
            samples with temperature 1, no top-k / top-p. ``max_new_tokens``: the config's, else
            64 (not transformers' 20 tokens in total).
        seed: same seed, same method, same output; rows draw independently.
        eos_token_id: an id or a list of ids (default: the generation config's); a row stops
            after emitting one, its later positions get ``pad_token_id`` (default: the config's,
            else the first EOS id, else 0), and the call ends when every row has stopped:
            ``sequences`` then ends at the longest row, as in transformers.
        attention_mask: ``[B, T]``, 1 = real token (left or right padding).
        streamer: an object with ``put(tensor)`` and ``end()`` (transformers' ``TextStreamer``):
            ``put(input_ids)`` first, then after every step the new token columns every row has
            committed (``[B, n]``; a stopped row shows ``pad_token_id``), ``end()`` last.
        cfg_scale, uncond_input_ids: classifier-free guidance on a doubled batch; the
            unconditional rows see the same drafts and the guided logits are what is verified.
        compile: how the verify step runs: ``auto`` (default: one CUDA graph of the whole step
            on CUDA; elsewhere eager until this process has run the step about as long as
            compiling it costs, then ``torch.compile``, kept only if it runs faster per step
            than eager did), ``eager``, ``compile`` or ``cudagraph``.
        progress: show a progress bar.

    Raises:
        ValueError: unknown method or option, bad sampling values, bad ``input_ids`` shape,
            a sequence longer than the model's maximum, vertical init without a grid width.
        TypeError: ``input_ids`` is not an integer tensor; ``model`` has no language-model head; a
            transformers ``generate`` keyword that mmaccel does not implement (``num_beams``, ...).
    """
    refuse_unsupported(method_options, frozenset(o for opts in OPTIONS.values() for o in opts))
    config = resolve_method(method, method_options)
    if isinstance(config, CoDeConfig):
        raise ValueError(not_raster())
    if isinstance(config, CSpDConfig):
        raise ValueError(not_masked())
    check_ids("input_ids", input_ids, attention_mask)
    lm = as_causal_lm(model)
    eos_given = eos_token_id is not None
    user = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id)  # fmt: skip
    s = with_defaults(user, lm, input_ids.shape[1])
    max_new_tokens, do_sample, temperature, top_k, top_p = (s[k] for k in list(user)[:5])
    eos_ids, pad_token_id = eos_ids_of(s["eos_token_id"]), s["pad_token_id"]
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    check_sampling(max_new_tokens, temperature, top_k, top_p, cfg_scale)
    if streamer is not None and not (
        callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))
    ):
        raise TypeError(f"streamer must have put(tensor) and end() methods (like transformers' TextStreamer), "
                        f"got {type(streamer).__name__}")  # fmt: skip
    if compile not in MODES:
        raise ValueError(f"compile must be one of {', '.join(MODES)}; got {compile!r}")
    if (cfg_scale is None) != (uncond_input_ids is None):
        raise ValueError("classifier-free guidance needs both cfg_scale and uncond_input_ids")
    if uncond_input_ids is not None:
        check_ids("uncond_input_ids", uncond_input_ids, uncond_attention_mask)
        if uncond_input_ids.shape[0] != input_ids.shape[0]:
            raise ValueError("uncond_input_ids must have as many rows as input_ids")
    grid_width = getattr(config, "grid_width", None) or lm.grid_width
    if isinstance(config, JacobiConfig) and config.init == "vertical" and grid_width is None:
        raise ValueError(
            f"init='vertical' copies the token one grid row up, but model family {lm.family!r} declares "
            "no grid width; pass grid_width=... or use init='random' or 'horizontal'"
        )
    if isinstance(config, ZipARConfig):
        if grid_width is None:
            raise ValueError(
                f"method {config.name!r} decodes a raster grid, but model family {lm.family!r} declares no grid "
                "width; pass grid_width=... for an image model, or use a method without a grid"
            )
        if max_new_tokens % grid_width:
            raise ValueError(
                f"method {config.name!r} needs max_new_tokens ({max_new_tokens}) to be whole rows of the "
                f"grid (a multiple of grid_width={grid_width})"
            )
        if eos_given:
            raise ValueError(
                f"method {config.name!r} decodes fixed-size images; eos_token_id is not supported"
            )
        eos_ids = ()  # a generation config's EOS does not apply to a fixed-size image
    ids_BT, lens_B = pack(input_ids, attention_mask)
    if uncond_input_ids is not None:
        u_ids, u_lens = pack(uncond_input_ids, uncond_attention_mask)
        ids_BT, lens_B = pad_cat(ids_BT, u_ids), torch.cat([lens_B, u_lens])
    longest = int(lens_B.max()) + max_new_tokens
    if longest > lm.max_seq_len:
        raise ValueError(
            f"prompt ({int(lens_B.max())} tokens) + max_new_tokens ({max_new_tokens}) = {longest} exceeds the "
            f"model's maximum sequence length {lm.max_seq_len}"
        )
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p, cfg_scale)
    with torch.inference_mode():
        return _decode(
            lm,
            config,
            sampling,
            input_ids,
            ids_BT,
            lens_B,
            max_new_tokens,
            seed,
            eos_ids,
            pad_token_id,
            grid_width,
            compile,
            progress,
            streamer=streamer,
        )


def _decode(
    lm: CausalLM,
    config,
    sampling,
    input_ids,
    ids_BT,
    lens_B,
    max_new_tokens,
    seed,
    eos_ids: tuple[int, ...],
    pad_token_id,
    grid_width,
    compile_mode,
    progress,
    probe_steps: int = 0,
    streamer: Any = None,
) -> GenerateOutput | list[float]:
    """Decode a packed batch with a resolved config. ``probe_steps`` > 0 (``window="auto"``
    timing a window): run that many verify steps eagerly and return their seconds instead."""
    t0 = time.perf_counter()
    device = device_of(lm)
    rows, prompt_T = ids_BT.shape
    H = max_new_tokens // grid_width if isinstance(config, ZipARConfig) else 0
    streams = num_streams(H, grid_width, config.zipar_window) if H else 1
    reported = config
    adaptive = isinstance(config, JacobiConfig) and config.window == "auto" and variable_drafts(config)
    if adaptive:  # each step's length is chosen as it goes (mmaccel.draft_length)
        config = dataclasses.replace(config, window=min(draft_length.AUTO_WINDOW, max_new_tokens))
    if isinstance(config, JacobiConfig) and config.window == "auto" and probe_steps == 0:
        K = 0
        if config.name != "zipar":  # plain ZipAR has no drafts to choose

            def time_steps(K: int) -> list[float]:
                return _decode(lm, dataclasses.replace(config, window=K), sampling, input_ids, ids_BT, lens_B,
                               max_new_tokens, 0, eos_ids, pad_token_id, grid_width, "eager", False,
                               probe_steps=window.WARMUP_STEPS + window.TIMED_STEPS)  # fmt: skip

            base = max_new_tokens / zipar_forward_passes(H, grid_width, config.zipar_window) if H else 1.0
            K = window.choose(lm, config, sampling, (rows, prompt_T), time_steps, max_new_tokens, base)
        config = dataclasses.replace(config, window=K)
    drafter, acceptor = build(config, lm)
    K = drafter.window
    B = input_ids.shape[0]
    ids_BT, lens_B = ids_BT.to(device), lens_B.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    zipar = ZipARLayout(H, grid_width, min(config.zipar_window, grid_width), streams, K) if H else None
    block = streams * (K + 1) if zipar is not None else 1 + K
    cache = lm.new_cache(rows, prompt_T + max_new_tokens + block)

    # prefill: the whole (right-padded) prompt in one forward; padding is masked out by lens_B
    slots_BT = cache.slots(prompt_T)
    logits_BTV = lm.forward(ids_BT, slots_BT, cache, slots_BT, cache.attn_mask(prompt_T))
    last_BV = logits_BTV.gather(1, (lens_B - 1)[:, None, None].expand(-1, 1, logits_BTV.shape[-1]))
    first_B = sample(target_probs(last_BV, sampling)[:, 0], generator)
    cache.rollback(lens_B.to(torch.int32))

    history_BN = torch.zeros(B, max_new_tokens + K + 2, dtype=torch.long, device=device)
    history_BN[:, 0] = first_B
    ones_B = torch.ones(B, dtype=torch.long, device=device)
    done_B = ones_B >= max_new_tokens
    done_B |= is_eos(first_B, eos_ids)
    ctx = DraftContext(
        lm.vocab_size, grid_width, generator, history_BN, ones_B.clone(), ids_BT[:B], lens_B[:B]
    )
    draft = drafter.start(ctx, first_B) if zipar is None else NoDraft().start(ctx, first_B)
    # a step emits at most one block's worth of tokens per row
    q_BKV = (
        draft.q_BKV.clone() if draft.q_BKV is not None else torch.zeros(B, 0, lm.vocab_size, device=device)
    )
    draft_len_B = draft.length_B.clone() if draft.length_B is not None else torch.full_like(ones_B, K)
    state = DecodeState(first_B.clone(), ctx.num_generated_B, done_B, ones_B.clone(),
                        torch.zeros(block + 1, dtype=torch.long, device=device), draft.tokens_BK.clone(),
                        q_BKV, torch.zeros_like(history_BN), torch.zeros(1, dtype=torch.long, device=device),
                        draft_len_B, draft.evidence_B.clone() if draft.evidence_B is not None else ones_B * 0)  # fmt: skip
    state.emitted_hist_T[1] += B

    # what makes two calls the same compiled step (the same weights' module, method, sampling, shapes)
    kind = (type(lm).__qualname__, weights_id(lm), config, sampling, rows, block, max_new_tokens,
            eos_ids, cache.capacity, str(device))  # fmt: skip
    steps: dict[int | None, tuple[CompiledStep, Any, int]] = {}  # step length -> (step, draws, block)

    def step_of(k: int | None) -> tuple[CompiledStep, Any, int]:
        """The step verifying ``k`` drafts (None: the whole window), made at first use."""
        if k in steps:
            return steps[k]
        if zipar is not None:
            runner = ZipARRunner(zipar, cache, drafter, acceptor, sampling, ctx, state, lens_B, lm)
            fn, args, shapes, mutated = zipar_step, (runner,), runner.draws_shapes(), runner.tensors()
        else:
            fn = verify_step
            args = (lm, cache, drafter, acceptor, sampling, state, ctx, max_new_tokens, eos_ids, k)
            shapes = step_draws(drafter, acceptor, B, lm.vocab_size, k)
            mutated = [*state.tensors(), history_BN, cache.lens_B, *cache.k, *cache.v]
        kind_k = (fn.__name__, k, *kind)
        mode = resolve_mode(compile_mode, device, kind_k)
        size = block if k is None else step_size(drafter, k)
        step = CompiledStep(fn, [(rows, size)], mode, args=args, kind=kind_k, mutated=mutated,
                            fallback=compile_mode == "auto")  # fmt: skip
        steps[k] = step, shapes, size
        return steps[k]

    variable = zipar is None and drafter.variable and K > 0
    depth = max(drafter.branch_lengths()) if zipar is None else K
    policy = LengthPolicy((window.method_key(lm, config, sampling), rows, str(device)), depth, adaptive,
                          drafter.step_ladder())  # fmt: skip
    if probe_steps:
        step, shapes, _ = step_of(None)
        return _time_steps(step, shapes, generator, device, rows, block, state, probe_steps)
    t_loop = time.perf_counter()

    forwards = 1
    bar = tqdm(total=B * max_new_tokens, disable=not progress, desc=f"mmaccel {config.name}", unit="tok")
    emitted = B
    bar.update(emitted)
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    stream = StreamFeed(streamer, input_ids, ctx.history_BN, pad)
    clock = StepClock(policy, max_new_tokens)
    while True:
        # the loop's one host sync per iteration: whether every row is done, each row's count and
        # (variable drafts) each row's real drafts and their evidence
        synced = [state.done_B.long(), state.num_generated_B]
        synced += [state.draft_len_B, state.draft_evidence_B] if variable else []
        done_gen = torch.cat(synced).tolist()
        all_done, counts = all(done_gen[:B]), done_gen[B : 2 * B]
        k = clock.step(done_gen[:B], counts, done_gen[2 * B : 3 * B], done_gen[3 * B :]) if variable else None
        stream.put(done_gen[:B], counts, all_done)
        bar.update(sum(counts) - emitted)
        emitted = sum(counts)
        if all_done:
            break
        step, shapes, size = step_of(k)
        step(Draws.draw(shapes, generator, device), bucket=(rows, size))
        forwards += 1
    bar.close()
    loop_s = time.perf_counter() - t_loop
    if len(steps) == 1 and compile_mode == "auto":  # steps of several lengths: no one kind to credit
        step = next(iter(steps.values()))[0]
        if step.mode == "eager":
            record_eager(step.kind, loop_s, forwards - 1)
        elif step.mode == "compile" and not step.compiled_in_call:
            record_compiled(step.kind, loop_s, forwards - 1)
    hist = state.emitted_hist_T.cpu().tolist()
    if forwards > 1 and not variable:  # a variable drafter's lengths are mmaccel.draft_length's
        window.record(lm, config, sampling, K, window.step_histogram(hist, B))

    # as transformers: the call ends when every row has stopped, so the output ends at the longest row
    width = max(counts) if eos_ids else max_new_tokens
    new_BN = ctx.history_BN[:, :width]
    new_BN = torch.where(
        torch.arange(width, device=device)[None] < state.num_generated_B[:, None], new_BN, pad
    )
    new_BN = new_BN.cpu()
    sequences = torch.cat([input_ids.cpu(), new_BN.to(input_ids.dtype)], dim=1)
    return GenerateOutput(
        sequences=sequences,
        new_tokens=new_BN,
        num_tokens=state.num_generated_B.cpu(),
        num_forward_passes=forwards,
        forward_passes_per_row=state.steps_B.cpu(),
        accepted_histogram=hist,
        latency_s=time.perf_counter() - t0,
        method=reported if adaptive else config,
        token_forward_index=state.token_forward_BN[:, :width].cpu(),
    )


def _time_steps(step, shapes, generator, device, rows, block, state, n: int) -> list[float]:
    """Seconds of up to ``n`` consecutive verify steps (fewer if every row finishes first)."""
    seconds = []
    for _ in range(n):
        if bool(state.done_B.all()):
            break
        _sync(device)
        t0 = time.perf_counter()
        step(Draws.draw(shapes, generator, device), bucket=(rows, block))
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
