"""Model benchmark: RMT and ARMT over input lengths, "stock" (reference-style) against "fast" (babilong_fast).

Used by ``benchmarks/throughput.py`` (``--suite models``, its default); see :data:`STOCK_EMULATION` for
exactly what the stock mode does and :func:`run_suite` for the measurement rules.

Both modes answer the same input: ``context (length - 20 tokens) ‖ question ‖ GEN``, then greedy decoding of
``max_new_tokens`` tokens (EOS disabled, so every run decodes the same number of steps). The two modes must
produce the same answer tokens (``fast`` is exact); each fast row records whether they did, and whether the
stock answer differs from the answer to the question alone (if not, the comparison says little about the memory).
"""
from __future__ import annotations

import gc
import os
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch

import mamba_bench
from babilong_fast.data.lengths import FINETUNE_MARGIN, length_name, parse_length
from babilong_fast.engine import GEN_ID, StreamRunner
from babilong_fast.models import ARMT, RMT, MambaLM
from babilong_fast.models._common import segment_bounds

STOCK_EMULATION = (
    "stock = the public wrappers' validation step (docs/math.md §3), emulated with babilong_fast's own per-segment "
    "math so that both modes compute the same function: (1) the whole sample is materialised as one [B, N] int64 "
    "tensor and moved to the device (the reference collate); (2) a Python loop over left-aligned segments runs "
    "model.segment_forward(..., write=True, return_logits=True) on every segment, i.e. a full backbone forward "
    "plus the LM head giving full-vocabulary logits for every token row; (3) output_hidden_states is emulated by "
    "hooks that keep a reference to the same n_layer+1 tensors HF returns (block-0 input, block 0..n-2 outputs, "
    "ln_f output; memory rows included), which is what output_hidden_states costs in HF (references, no extra "
    "math); (4) every segment's logits and hidden states are kept until the end and then concatenated over "
    "segments as process_outputs does (full_logits, full_hidden_states), so memory grows as O(N * vocab); "
    "(5) the answer is decoded greedily from the final segment with the model's generate rule "
    "(generate_from_state on the memory before the final segment; with --stock-answer generate, model.generate "
    "re-runs every segment as RMT-BL's validation does, a second pass). ARMT's associative read/write use the "
    "'torch' backend (the reference einsum math). Not emulated: HF's per-segment KV cache (use_cache defaults to "
    "True in the reference; our backbone call passes use_cache=False), per-segment loss on empty label masks, "
    "the reference's eager attention (both modes use the backbone's attention implementation, recorded in "
    "configs). So stock here is a lower bound on the cost of the wrappers' forward, which RMT-BL's validation "
    "runs; ARMT-HEAD validates by generate alone, which keeps no segment's outputs, so for ARMT stock memory is "
    "that of its forward, above that of its validation."
)

FAST_DESCRIPTION = (
    "fast = babilong_fast.engine.StreamRunner.run: the input streamed in chunks of 4096 tokens per row (generated "
    "lazily; with --data babilong, BabilongSample.iter_chunks), re-blocked into a static [B, segment] buffer, "
    "each segment run with memory writes and no LM head (GPT-2 blocks by gpt2_block_infer; --step hf: the blocks' "
    "own forward; --step compiled: StreamRunner(compile=True), the step traced by torch.compile); "
    "the question ‖ GEN appended and the answer decoded with the model's generate rule. ARMT uses the backend "
    "named by --backends (default auto)."
)

MEM_NOTE = {
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats (includes weights and inputs)",
    "vmhwm": "peak RSS of the process (VmHWM, reset through /proc/self/clear_refs before each run)",
    "sampled": "peak RSS sampled every 5 ms by a thread (/proc/self/statm)",
}

CHUNK_TOKENS = 4096
PREDICT_SKIP_FACTOR = 2.0  # a length predicted past twice its budget is skipped (predicted_over_budget)
STOCK_MAMBA_WARMUP_TOKENS = 600  # the stock Mamba warm-up (models_bench.run_suite)
QUESTION_TOKENS = 8


class BudgetExceeded(Exception):
    """A run went past its wall-clock budget; it is aborted and reported as skipped."""


@dataclass
class Watch:
    """Cooperative watchdog: the run checks it after every segment (stock) or chunk (fast)."""

    deadline: float
    budget_s: float
    segments: int = 0
    total_segments: int = 0
    graphs: dict | None = None  # fast runs: whether the step replayed from CUDA graphs (a failed capture runs eagerly)

    def check(self) -> None:
        if time.perf_counter() > self.deadline:
            raise BudgetExceeded(f"exceeded {self.budget_s:g} s")


def backbone_config(gpu: bool) -> dict:
    """GPT-2 small on a GPU (the paper's backbone), a tiny GPT-2 with the real vocabulary on a CPU."""
    if gpu:
        return dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    return dict(n_layer=2, n_embd=128, n_head=4, n_positions=256, vocab_size=50257)


def wrapper_config(name: str, gpu: bool) -> dict:
    seg = 512 if gpu else 128
    if name == "armt":
        return dict(num_mem_tokens=10 if gpu else 4, d_mem=64 if gpu else 16, nu=3, segment_size=seg)
    return dict(num_mem_tokens=16 if gpu else 4, segment_size=seg)


def build_model(name: str, backbone: dict, wrapper: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**backbone)
    gpt2 = GPT2LMHeadModel(cfg)
    model = ARMT(gpt2, **wrapper) if name == "armt" else RMT(gpt2, **wrapper)
    return model.to(device=device, dtype=dtype).eval(), getattr(gpt2.config, "_attn_implementation", None)


# ---------------------------------------------------------------- inputs
def random_chunks(B: int, n: int, vocab: int, seed: int):
    """Chunk ``k`` of a seeded random stream, generated on demand: the same ids for both modes."""
    for k, a in enumerate(range(0, n, CHUNK_TOKENS)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        yield torch.randint(0, vocab, (B, min(CHUNK_TOKENS, n - a)), generator=g)


def babilong_chunks(samples):
    """The samples' inputs, zipped into ``[B, n]`` chunks (all samples of one length have the same size)."""
    for parts in zip(*(s.iter_chunks(CHUNK_TOKENS) for s in samples), strict=True):
        yield torch.tensor(parts, dtype=torch.long)


@dataclass
class Inputs:
    B: int
    context: int
    vocab: int
    data: str
    seed: int = 0
    samples: list | None = None

    def chunks(self):
        if self.data == "babilong":
            return babilong_chunks(self.samples)
        return random_chunks(self.B, self.context, self.vocab, self.seed)

    def question(self) -> torch.Tensor:
        if self.data == "babilong":  # each row its own sample's question (qa1's all have 5 tokens)
            qs = [s.question_ids() for s in self.samples]
            if len({len(q) for q in qs}) == 1:
                return torch.tensor(qs, dtype=torch.long)
            q = torch.tensor(qs[0], dtype=torch.long)  # ragged: sample 0's for every row (the same work)
        else:
            q = torch.randint(0, self.vocab, (QUESTION_TOKENS,), generator=torch.Generator().manual_seed(self.seed))
        return q.unsqueeze(0).expand(self.B, -1)

    @property
    def total_tokens(self) -> int:
        """Input tokens per row: context, question and GEN."""
        return self.context + self.question().shape[1] + 1


def make_inputs(B: int, length: int, vocab: int, data: str, seed: int = 0) -> Inputs:
    context = length - FINETUNE_MARGIN
    if context < 1:
        raise ValueError(f"length {length} leaves no context after the margin of {FINETUNE_MARGIN}")
    samples = None
    if data == "babilong":
        from babilong_fast.data import BabilongGenerator

        samples = BabilongGenerator("qa1", length, margin=FINETUNE_MARGIN, seed=seed).take(B)
        context = samples[0].num_tokens
    return Inputs(B, context, vocab, data, seed, samples)


# ---------------------------------------------------------------- the two modes
def keep_hidden_states(model, sink: list):
    """Hooks keeping what ``output_hidden_states=True`` returns: block-0 input, blocks 0..n-2 outputs, ln_f out."""
    tr = model.backbone.transformer
    handles = [tr.h[0].register_forward_pre_hook(
        lambda m, args, kwargs: sink.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)]
    for block in list(tr.h)[:-1]:
        handles.append(block.register_forward_hook(
            lambda m, args, out: sink.append(out[0] if isinstance(out, tuple) else out)))
    handles.append(tr.ln_f.register_forward_hook(lambda m, args, out: sink.append(out)))
    return handles


def run_stock(model, inputs: Inputs, device, watch: Watch, max_new_tokens: int, answer: str = "state") -> torch.Tensor:
    S = model.segment_size
    with torch.no_grad():
        ids = torch.cat([*inputs.chunks(), inputs.question(), torch.full((inputs.B, 1), GEN_ID)], 1).to(device)
        bounds = segment_bounds(ids.shape[1], S)
        watch.total_segments = len(bounds)
        kept_logits, kept_hidden = [], []
        state = model.init_state(inputs.B, device)
        before_last = state
        for k, (a, b) in enumerate(bounds):
            before_last = state
            hidden_states: list = []
            handles = keep_hidden_states(model, hidden_states)
            try:
                logits, _, state = model.segment_forward(ids[:, a:b], None, state, write=True, return_logits=True)
            finally:
                for h in handles:
                    h.remove()
            kept_logits.append(logits)
            kept_hidden.append(hidden_states)
            watch.segments = k + 1
            watch.check()
        full_logits = torch.cat(kept_logits, 1)  # process_outputs: full_logits
        full_hidden = [torch.cat(layer, 1) for layer in zip(*kept_hidden, strict=True)]  # and full_hidden_states
        a, b = bounds[-1]
        if answer == "generate":
            out = model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=-1)
        else:
            out = model.generate_from_state(ids[:, a:b], before_last, max_new_tokens=max_new_tokens, eos_token_id=-1)
        del full_logits, full_hidden, kept_logits, kept_hidden
    return out


def no_context_answer(model, inputs: Inputs, device, max_new_tokens: int, mamba_chunk: int | None = None):
    """The greedy answer to ``question ‖ GEN`` alone, from a fresh memory (untimed). Where it equals the stock
    answer, the fast = stock comparison could not have caught a broken memory: with random weights the answer is
    often decided by the question's last tokens."""
    ids = torch.cat([inputs.question(), torch.full((inputs.B, 1), GEN_ID)], 1).to(device)
    with torch.no_grad():
        if mamba_chunk is not None:
            return MambaLM(model, chunk_size=mamba_chunk, backend="torch").generate(ids, max_new_tokens, -1).cpu()
        return model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=-1).cpu()


def run_streamed(
    model, inputs: Inputs, watch: Watch, max_new_tokens: int, segment_size: int, step: str = "lean",
    runners: dict | None = None,
) -> torch.Tensor:
    """``StreamRunner(model).run`` over ``inputs``, checking ``watch`` before every chunk. ``step`` (RMT/ARMT):
    ``lean`` (GPT-2 blocks by ``gpt2_block_infer``), ``hf`` (the blocks' own forward) or ``compiled``
    (``StreamRunner(compile=True)``). ``runners``: a dict that keeps the runner (its CUDA graphs and compiled
    step) from one call to the next, as an evaluation over many samples does; None: a new runner."""
    key = (id(model), step)
    runner = None if runners is None else runners.get(key)
    if runner is None:
        runner = StreamRunner(model, progress=False, compile=step == "compiled")
        workspace = getattr(runner.adapter, "workspace", None)
        if workspace is not None:
            workspace.lean_blocks = step != "hf"
        if runners is not None:
            runners[key] = runner
    graphed_before = runner._steps.graphed_steps

    def watched():
        n = 0
        for c in inputs.chunks():
            watch.check()
            n += c.shape[1]
            watch.segments = n // segment_size
            yield c
        watch.check()

    watch.total_segments = -(-inputs.total_tokens // segment_size)
    out = runner.run(watched(), inputs.question(), max_new_tokens=max_new_tokens, eos_token_id=-1)
    # The whole context went through the stream (rows without a stock answer to compare have no other check).
    streamed = runner.state.num_tokens
    if streamed != inputs.context:
        raise RuntimeError(f"the fast run streamed {streamed} of the {inputs.context} context tokens")
    watch.graphs = {"cuda_graphs": runner._steps.enabled, "graphed_steps": runner._steps.graphed_steps - graphed_before,
                    "streamed_tokens": streamed}
    return out


def run_fast(
    model, inputs: Inputs, device, watch: Watch, max_new_tokens: int, step: str = "lean", runners: dict | None = None
) -> torch.Tensor:
    return run_streamed(model, inputs, watch, max_new_tokens, model.segment_size, step, runners)


# ---------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vmhwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _vmhwm_bytes()
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc); without it a CPU run starts at the previous runs' RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one run: device memory on a GPU, process RSS on a CPU (method in ``self.method``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda" if device.type == "cuda" else ("vmhwm" if _can_reset_hwm() else "sampled")
        self.base = self.peak = 0
        self._stop = None

    def __enter__(self):
        gc.collect()
        if self.method != "cuda":
            malloc_trim()  # hand the previous runs' freed heap back, so the start RSS is not theirs
        if self.method == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_bytes()
            if self.method == "vmhwm":
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            else:
                self.peak = self.base
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.method == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.method == "vmhwm":
            self.peak = _vmhwm_bytes()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        return False


# ---------------------------------------------------------------- one row
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def stock_bytes_estimate(model, inputs: Inputs, dtype: torch.dtype) -> int:
    """Bytes the stock run must hold at its peak: kept logits and hidden states, twice (kept + concatenated)."""
    tr = model.backbone.transformer
    V, d, L = tr.wte.weight.shape[0], tr.wte.weight.shape[1], len(tr.h)
    e = torch.finfo(dtype).bits // 8
    N = inputs.total_tokens
    rows = N + len(segment_bounds(N, model.segment_size)) * 2 * model.num_mem_tokens
    return 2 * inputs.B * (N * V + (L + 1) * rows * d) * e


def time_row(fn, device, budget_s: float, repeats: int, long_s: float):
    """Timed runs of ``fn(watch)`` (after the caller's warm-up): median seconds, peak memory, answer.

    The first run at this length is a warm-up when it takes under ``long_s`` seconds: its time is reported apart
    (``warm_run_s``) and ``repeats`` timed runs follow (the H100's first runs were up to 4x slower than the
    next: one-time costs of the length that the caller's short warm-up does not reach). A first run of
    ``long_s`` or more is the only one and is marked ``cold``: its one-time costs are in its time. A run past
    ``budget_s`` is aborted (BudgetExceeded). Further repeats are made only while the previous run took under
    ``long_s`` seconds.
    """
    times, peaks, bases, out, method, graphs = [], [], [], None, None, None  # method, graphs: of the last run
    warm_s = None
    while len(times) < repeats:
        with PeakMemory(device) as mem:
            watch = Watch(time.perf_counter() + budget_s, budget_s)  # after the memory reset (gc, malloc_trim)
            sync(device)
            t0 = time.perf_counter()
            out = fn(watch)
            sync(device)
            t = time.perf_counter() - t0
        if t > budget_s:
            raise BudgetExceeded(f"exceeded {budget_s:g} s")
        if warm_s is None and not times and t < long_s:
            warm_s = t
            continue
        times.append(t)
        peaks.append(mem.peak)
        bases.append(mem.base)
        method, graphs = mem.method, watch.graphs
        del mem
        if t >= long_s:
            break
    top = max(range(len(peaks)), key=peaks.__getitem__)
    return {"seconds": statistics.median(times), "runs_s": times, "warm_run_s": warm_s, "cold": warm_s is None,
            "peak_mem_bytes": peaks[top], "start_mem_bytes": bases[top],
            "peak_above_start_bytes": peaks[top] - bases[top], "mem_method": method, **(graphs or {})}, out


@dataclass
class Settings:
    models: list
    modes: list
    lengths: list
    batches: list
    dtype: torch.dtype
    backends: list
    device: torch.device
    budget_s: float
    fast_budget_s: float
    repeats: int
    long_s: float
    max_new_tokens: int = 10
    data: str = "random"
    stock_answer: str = "state"
    warmup: bool = True
    steps: list = field(default_factory=lambda: ["lean"])


def run_suite(cfg: Settings, backbone: dict, wrappers: dict, log=print, on_row=None) -> tuple[list[dict], dict]:
    """Every (model, batch, mode, backend) over increasing lengths; a budget miss skips the longer lengths.

    A run that raises is reported as failed (error and traceback on stderr) and the suite goes on.
    ``on_row(rows, info)`` is called after every row (to save partial results).
    Returns (rows, per-model info: attention implementation and parameter counts).
    """
    rows, info = [], {}
    for name in cfg.models:
        mamba = name == "mamba"
        if mamba:
            mcfg = wrappers["mamba"]
            model = mamba_bench.build_mamba(mcfg["config"], cfg.device, cfg.dtype)
            seg, vocab = mcfg["chunk_size"], mcfg["config"]["vocab_size"]
            info[name] = {"parameters": sum(p.numel() for p in model.parameters())}
        else:
            model, attn = build_model(name, backbone, wrappers[name], cfg.device, cfg.dtype)
            seg, vocab = model.segment_size, backbone["vocab_size"]
            info[name] = {"attn_implementation": attn, "parameters": sum(p.numel() for p in model.parameters())}
        for B in cfg.batches:
            answers: dict[int, torch.Tensor] = {}
            no_context: dict[int, torch.Tensor] = {}  # answers without the context: is the comparison telling?
            if name in ("armt", "mamba"):
                fast_backends = cfg.backends
            else:
                fast_backends = ["-"]  # RMT has no backend-dependent op
            # the fast step: lean (gpt2_block_infer), hf (the blocks' own forward), compiled; stock: hf blocks
            steps = ["-"] if mamba else cfg.steps
            stock_row = ("stock", "torch" if name == "armt" else "-", "-" if mamba else "hf")
            variants = [stock_row] if "stock" in cfg.modes else []
            compiled_backend = ["auto"] if name == "armt" else ["-"]  # the compiled step ignores ARMT's backend
            fast = [("fast", b, st) for st in steps for b in (compiled_backend if st == "compiled" else fast_backends)]
            variants += fast if "fast" in cfg.modes else []
            for mode, backend, step in variants:
                if name == "armt":
                    model.backend = backend
                budget = cfg.budget_s if mode == "stock" else cfg.fast_budget_s

                runners: dict = {}  # this variant's StreamRunner, reused across its runs (graphs, compiled step)

                def fn(watch, inputs=None, mode=mode, backend=backend, model=model, step=step, mamba=mamba, seg=seg,
                       runners=runners):
                    if mamba and mode == "stock":
                        return mamba_bench.run_stock_mamba(
                            model, inputs, cfg.device, watch, cfg.max_new_tokens, wrappers["mamba"]["prefix"])
                    if mamba:
                        return mamba_bench.run_fast_mamba(
                            model, inputs, cfg.device, watch, cfg.max_new_tokens, seg, backend, runners)
                    if mode == "stock":
                        return run_stock(model, inputs, cfg.device, watch, cfg.max_new_tokens, cfg.stock_answer)
                    return run_fast(model, inputs, cfg.device, watch, cfg.max_new_tokens, step, runners)

                stop_reason, measured = None, []  # measured: (length, seconds, its name) of each finished length
                if cfg.warmup:  # one-time costs (allocator, cuBLAS handles, Triton compiles) on a short input
                    try:
                        # Two segments; for stock Mamba (HF's prefix scan is a Python loop, ~1.6 ms a token on an
                        # H100) a short prefix and the answer's single-token calls warm both of its paths.
                        n = STOCK_MAMBA_WARMUP_TOKENS if mamba and mode == "stock" else 2 * seg + FINETUNE_MARGIN + 1
                        warm = make_inputs(B, n, vocab, "random", seed=1)
                        fn(Watch(float("inf"), float("inf")), warm)
                        sync(cfg.device)
                    except Exception as e:  # noqa: BLE001 - reported per row, the suite goes on
                        traceback.print_exc()
                        stop_reason = f"the warm-up failed: {type(e).__name__}: {str(e)[:300]}"
                for length in cfg.lengths:
                    row = {"model": name, "mode": mode, "backend": backend, "step": step,
                           "batch": B, "length": length, "length_name": length_name(length),
                           "dtype": str(cfg.dtype).replace("torch.", ""), "data": cfg.data}
                    if (stock_estimate_skip(row, model, cfg, B, length, vocab, stop_reason, wrappers.get("mamba"))
                            or predicted_over_budget(row, measured, length, budget)):
                        rows.append(row)
                        log(format_row(row))
                        continue
                    inputs = make_inputs(B, length, vocab, cfg.data)
                    row.update(input_tokens=inputs.total_tokens, segments=-(-inputs.total_tokens // seg))
                    watch_holder = {}
                    try:
                        def call(watch, inputs=inputs, watch_holder=watch_holder):
                            watch_holder["w"] = watch
                            return fn(watch, inputs)

                        res, out = time_row(call, cfg.device, budget, cfg.repeats, cfg.long_s)
                        row.update(res)
                        row["tokens_per_s"] = B * inputs.total_tokens / res["seconds"]
                        measured.append((length, res["seconds"], row["length_name"]))
                        row["seconds_per_sample"] = res["seconds"] / B
                        ans = out.detach().cpu()
                        if mode == "stock":
                            answers[length] = ans
                            no_context[length] = no_context_answer(
                                model, inputs, cfg.device, cfg.max_new_tokens, seg if mamba else None)
                        elif length in answers:
                            row["answer_matches_stock"] = bool(torch.equal(ans, answers[length]))
                            row["answer_needs_context"] = not torch.equal(answers[length], no_context[length])
                    except BudgetExceeded as e:
                        w = watch_holder.get("w")
                        where = f" at segment {w.segments}/{w.total_segments}" if w else ""
                        row["skipped"] = f"{e}{where}; not extrapolated"
                        stop_reason = f"a shorter length exceeded {budget:g} s"
                    except torch.cuda.OutOfMemoryError:
                        w = watch_holder.get("w")
                        where = f" at segment {w.segments}/{w.total_segments}" if w else ""
                        row["failed"] = f"out of device memory{where}"
                        stop_reason = "a shorter length ran out of device memory"
                    except Exception as e:  # noqa: BLE001 - a broken run is a result too; the suite goes on
                        traceback.print_exc()
                        row["failed"] = f"{type(e).__name__}: {str(e)[:300]}"
                        stop_reason = "a shorter length failed"
                    finally:
                        watch_holder.clear()
                    gc.collect()
                    if cfg.device.type == "cuda":
                        torch.cuda.empty_cache()
                    rows.append(row)
                    log(format_row(row))
                    if on_row:
                        on_row(rows, info)
        del model
        gc.collect()
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, info


def predicted_over_budget(row: dict, measured: list[tuple], length: int, budget_s: float) -> bool:
    """Skip a length (and say why) whose run is predicted to take over ``PREDICT_SKIP_FACTOR`` times its budget.

    ``measured``: ``(length, seconds, name)`` of the shorter lengths this variant ran. With two, the time per
    token between the last two (their fixed costs cancel: the CUDA-graph capture, the answer's decoding); with
    one, a stock run's time scaled by the tokens (stock loops have no large fixed cost, and cost more per token
    as they grow); a fast run with one shorter length is always run. No time is reported for a skipped length.
    """
    if not measured or (len(measured) == 1 and row["mode"] != "stock"):
        return False
    (l1, t1, n1), (l2, t2, n2) = ([(0, 0.0, "")] + measured)[-2:]
    predicted = t2 + (t2 - t1) / (l2 - l1) * (length - l2)
    if predicted <= PREDICT_SKIP_FACTOR * budget_s:
        return False
    basis = f"{t2:.3g} s at {n2}" if len(measured) == 1 else f"{t1:.3g} s at {n1} and {t2:.3g} s at {n2}"
    row["skipped"] = (f"predicted {predicted:.0f} s from {basis} (linear in tokens), over {PREDICT_SKIP_FACTOR:g}x "
                      f"the {budget_s:g} s budget: not run, no time reported")
    return True


def stock_estimate_skip(row, model, cfg, B, length, vocab, stop_reason, mamba_cfg=None) -> bool:
    """Skip a run (and say why) after a shorter one failed, or a CPU stock run whose kept outputs cannot fit."""
    if stop_reason:
        row["skipped"] = stop_reason
        return True
    if row["mode"] == "stock" and cfg.device.type == "cpu":
        inputs = Inputs(B, length - FINETUNE_MARGIN, vocab, "random")
        if row["model"] == "mamba":
            need = mamba_bench.stock_bytes_estimate_mamba(mamba_cfg["config"], inputs, mamba_cfg["prefix"], cfg.dtype)
        else:
            need = stock_bytes_estimate(model, inputs, cfg.dtype)
        avail = mem_available_bytes()
        if avail is not None and need > 0.8 * avail:
            row["skipped"] = (f"would hold {need / 2**30:.1f} GiB of logits and hidden states; "
                              f"only {avail / 2**30:.1f} GiB available, and runs needing over 80 % of that are not "
                              "attempted on a CPU (the OOM killer)")
            return True
    return False


# ---------------------------------------------------------------- reporting
def _mem(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def _backend_label(r: dict) -> str:
    """The backend column: ARMT's memory-op backend; ``/hf`` for a fast row on the blocks' own forward,
    ``compiled`` for the compiled step (its associative ops are the torch references, traced)."""
    if r.get("mode") != "fast" or r.get("step") not in ("hf", "compiled"):
        return r["backend"]
    if r["step"] == "compiled":
        return "compiled"
    return "hf" if r["backend"] == "-" else r["backend"] + "/hf"


def format_row(r: dict) -> str:
    if r.get("status"):
        return f"{r['model']:<6} {r['status']}"
    lead = f"{r['model']:<6}{r['mode']:<7}{_backend_label(r):<8}{r['batch']:>3}{r['length_name']:>7}"
    if "seconds" not in r:
        return lead + f"{'-':>12}{'-':>12}{'-':>12}{'-':>12}{'-':>6}  " + r.get("skipped", r.get("failed", ""))
    note = ""
    if "answer_matches_stock" in r:
        note = "answer = stock" if r["answer_matches_stock"] else "ANSWER DIFFERS FROM STOCK"
        if r["answer_matches_stock"] and r.get("answer_needs_context") is False:
            note += " (as without the context: a weak check)"
    if r.get("mem_method") == "cuda" and r.get("cuda_graphs") is False:
        note = (note + "; " if note else "") + "EAGER: CUDA graph capture failed (see the warning)"
    if r.get("cold"):
        note = (note + "; " if note else "") + "cold (one run, one-time costs included)"
    return (lead + f"{r['tokens_per_s']:12.4g}{r['seconds_per_sample']:11.3g}s{_mem(r['peak_mem_bytes']):>12}"
            f"{_mem(r['peak_above_start_bytes']):>12}{len(r['runs_s']):>6}  {note}")


def table_header() -> str:
    return (f"{'model':<6}{'mode':<7}{'backend':<8}{'B':>3}{'length':>7}{'tokens/s':>12}{'s/sample':>12}"
            f"{'peak mem':>12}{'above start':>12}{'runs':>6}  note")


def ratio_lines(rows: list[dict]) -> list[str]:
    """fast/stock ratios of tokens/s and peak memory for every (model, batch, length) measured in both modes."""
    out = []
    stock = {(r["model"], r["batch"], r["length"]): r for r in rows if r.get("mode") == "stock"}
    for r in rows:
        if r.get("mode") != "fast":
            continue
        s = stock.get((r["model"], r["batch"], r["length"]))
        label = _backend_label(r)
        tag = f"{r['model']} B={r['batch']} {r['length_name']}" + (f" ({label})" if label != "-" else "")
        if "seconds" not in r:  # said too, so that every (model, batch, length) has its line
            stock_says = "not run" if s is None else (
                f"{s['tokens_per_s']:.4g} tokens/s" if "seconds" in s else s.get("skipped", s.get("failed", "")))
            out.append(f"{tag}: fast {r.get('skipped', r.get('failed', ''))}; stock {stock_says}")
            continue
        if s is None or "seconds" not in s:
            why = "not run" if s is None else s.get("skipped", s.get("failed", ""))
            out.append(f"{tag}: fast {r['tokens_per_s']:.4g} tokens/s; stock {why}")
            continue
        cold = [m for m, x in (("fast", r), ("stock", s)) if x.get("cold")]  # one run, one-time costs in it
        out.append(f"{tag}: fast/stock speed {r['tokens_per_s'] / s['tokens_per_s']:.2f}x, "
                   f"peak memory {r['peak_mem_bytes'] / s['peak_mem_bytes']:.3f}x "
                   f"({_mem(r['peak_mem_bytes'])} vs {_mem(s['peak_mem_bytes'])})"
                   + (f"; {' and '.join(cold)} cold (a single run)" if cold else ""))
    return out


def plot(rows: list[dict], path: str, title: str, mem_label: str) -> str | None:
    """Two log-log panels (tokens/s, peak memory) against input length; one line per model x mode.

    Returns None when written, else why not (matplotlib missing, nothing measured).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no plot"
    done = [r for r in rows if "seconds" in r]
    if not done:
        return "no measured row to plot"
    several_b = len({r["batch"] for r in done}) > 1
    fast_labels: dict[str, set] = {}
    for r in done:
        if r["mode"] == "fast":
            fast_labels.setdefault(r["model"], set()).add(_backend_label(r))
    lines: dict[str, list[dict]] = {}
    for r in done:
        label = f"{r['model'].upper()} {r['mode']}"
        if r["mode"] == "fast" and len(fast_labels[r["model"]]) > 1:
            backend = _backend_label(r)
            label += f" [{backend if backend != '-' else r.get('step', '-')}]"
        if several_b:
            label += f", B={r['batch']}"
        lines.setdefault(label, []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.4), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, rs) in enumerate(sorted(lines.items())):
        rs = sorted(rs, key=lambda r: r["input_tokens"])
        x = [r["input_tokens"] for r in rs]
        armt = rs[0]["model"] == "armt"  # hollow squares ARMT, dots RMT, triangles Mamba: overlaps stay visible
        marker = {"armt": "s", "rmt": "o", "mamba": "^"}[rs[0]["model"]]
        kw = dict(linestyle="-" if rs[0]["mode"] == "fast" else "--", color=colors[k % len(colors)],
                  marker=marker, markersize=8 if armt else 6,
                  markerfacecolor="none" if armt else colors[k % len(colors)], label=label)
        ax1.plot(x, [r["tokens_per_s"] for r in rs], **kw)
        ax2.plot(x, [r["peak_mem_bytes"] / 2**20 for r in rs], **kw)
    for ax, ylabel, t in ((ax1, "throughput (tokens/s, all rows of the batch)", "Throughput"),
                          (ax2, f"peak memory (MiB; {mem_label})", "Peak memory")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input length (tokens per sample)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
    # one legend for both panels, below them, so that it hides no point
    fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower center", ncol=min(-(-len(lines) // 2), 6),
               fontsize=8)
    fig.suptitle(title + " (skipped runs are not drawn)", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def parse_lengths(text: str) -> list[int]:
    """``"16k,128k,1M"`` -> sorted ints (k = 1000, M = 1,000,000)."""
    out = sorted({parse_length(t) for t in text.split(",") if t.strip()})
    if not out:
        raise ValueError(f"no length given in {text!r} (a comma list such as 16k,128k,1M)")
    if min(out) <= FINETUNE_MARGIN:
        raise ValueError(f"lengths must be > {FINETUNE_MARGIN} tokens, got {text!r}")
    return out
