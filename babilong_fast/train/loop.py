"""The curriculum training loop: stages, accumulation, clipping, validation, early stopping, checkpoints, resume.

Files in ``out``:

- ``config.json``: the run's :class:`~babilong_fast.train.config.TrainConfig`;
- ``log.csv`` (+ ``tensorboard/`` when installed): one row per optimizer step;
- ``stage<n>.pt``: the best weights of stage ``n`` (by validation exact match), a model file;
- ``best.pt``: the best weights of the latest stage: the trained model (``babilong-fast eval --checkpoint``);
- ``last.pt``: the resumable training state, every ``save_every`` steps and at every stage end.

The loss of a step is the token mean over the whole global batch, whatever its split into micro-batches and
processes: each micro-batch contributes its summed cross-entropy divided by the global number of scored tokens
(times the world size, which DistributedDataParallel's gradient averaging divides back out).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from babilong_fast.train import distributed as dd
from babilong_fast.train.config import TrainConfig
from babilong_fast.train.data import GeneratedData, OfficialData
from babilong_fast.train.evaluate import check_validation, evaluate
from babilong_fast.train.format import collate
from babilong_fast.train.kinds import LossModule, build_model, load_trained, save_trained
from babilong_fast.train.logbook import Logbook
from babilong_fast.train.schedule import make_optimizer, warmup_steps
from babilong_fast.train.state import Position, load_state, rng_state, save_state, seed_stage, set_rng_state


def _local_indices(cfg: TrainConfig, step: int, d: dd.Dist) -> range:
    """Sample indices of this rank's share of optimizer step ``step`` of a stage."""
    per_rank = cfg.batch_size // d.world
    start = step * cfg.batch_size + d.rank * per_rank
    return range(start, start + per_rank)


def _micro_batches(cfg: TrainConfig, data, n: int, step: int, d: dd.Dist) -> list[list]:
    """This rank's examples for optimizer step ``step`` of stage ``n``, sorted by length and cut into micro-batches.

    Sorting lets each micro-batch pad (and a recurrent model run segments) only as far as its own longest
    example; the step's summed loss and gradient do not depend on how the examples are grouped.
    """
    examples = data.batch(n, _local_indices(cfg, step, d))
    examples.sort(key=lambda e: len(e.input_ids))  # stable: the grouping is a function of the step
    m = cfg.micro_batch_size
    return [examples[i : i + m] for i in range(0, len(examples), m)]


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


RUN_MARKS = ("last.pt", "log.csv", "best.pt")  # with stage<n>.pt: a folder holding these holds a run


def run_files(out: Path) -> list[Path]:
    """The files (and TensorBoard folder) of the run that ``out`` holds; empty when it holds none (a new folder,
    or one where only ``config.json`` was written before a check failed)."""
    if not out.is_dir():
        return []
    marks = [out / n for n in RUN_MARKS if (out / n).exists()] + sorted(out.glob("stage*.pt"))
    if not marks:
        return []
    return sorted(marks + [out / n for n in ("config.json", "tensorboard") if (out / n).exists()])


def check_batch(cfg: TrainConfig, world: int) -> None:
    """ValueError unless the global batch splits evenly into processes and micro-batches."""
    if cfg.batch_size % world or (cfg.batch_size // world) % cfg.micro_batch_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of processes ({world}) x micro_batch_size "
            f"({cfg.micro_batch_size})"
        )


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    time_limit: float | None = None,
    validate_at_stop: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` in ``out`` (see the module docstring for the files).

    Args:
        cfg: the run's configuration (checked here).
        out: run folder (created).
        resume: continue from ``out/last.pt`` if it exists (same config, same number of processes).
        overwrite: start afresh in an ``out`` that holds a run (its run files are deleted first); without it, or
            ``resume``, such an ``out`` is refused.
        init_from: a model file of the same kind to start from (e.g. an earlier stage's ``stage<n>.pt``).
        progress: tqdm bar on the main process.
        stop_after: stop after this many optimizer steps of the whole run, as an interruption would (tests).
        time_limit: wall seconds of training in this call (>= 0; 0 stops after one step); when exceeded,
            ``last.pt`` is saved after the current step and the run stops (its best weights so far are in
            ``best.pt``, once a validation has run); ``resume`` goes on with the rest of the stage exactly as an
            uninterrupted run.
        validate_at_stop: validate at a time-limit stop too (``best.pt`` then covers every step), for a run
            that will not be resumed: the extra validation counts for ``best.pt`` and patience, so a resumed run
            would no longer equal an uninterrupted one.

    Returns:
        ``{"losses": [per-step loss], "valid": [validation rows], "position": Position, "seconds": float}``
        (losses of this invocation only).

    Raises:
        ValueError: a bad config or time_limit, a task with no samples (training or validation), a checkpoint of
            another kind or size, a config that differs from the one being resumed.
        FileExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is given.
    """
    cfg.check()
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and 0 <= time_limit < float("inf")):
        raise ValueError(f"time_limit must be a finite number of seconds >= 0 or None, got {time_limit!r}")
    out = Path(out)
    held = run_files(out)
    if held and not resume and not overwrite:
        raise FileExistsError(
            f"{str(out)!r} holds a run ({', '.join(p.name for p in held[:4])}): resume it, or overwrite it"
        )
    if overwrite and not resume and init_from is not None and Path(init_from).resolve() in {
        p.resolve() for p in held
    }:
        raise ValueError(f"init_from {str(init_from)!r} is a file of the run that overwrite deletes; copy it first")
    d = dd.setup(cfg.device)
    try:
        if overwrite and not resume and d.main:
            for path in held:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        dd.barrier(d)
        return _train(cfg, out, d, resume, init_from, progress, stop_after, time_limit, validate_at_stop)
    finally:
        dd.teardown(d)


def _config_diff(saved: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The config fields whose saved value is not the wanted one."""
    return sorted(k for k, v in want.items() if saved.get(k) != v)


def _check_no_other_run(out: Path, cfg: TrainConfig) -> None:
    """With ``resume`` and no ``last.pt``: ValueError if ``out``'s config.json is another config's (the run would
    start again under new settings and replace its log)."""
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))).to_dict()
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{str(path)!r} is not a readable training config ({e}); nothing to resume") from None
    if diff := _config_diff(saved, json.loads(json.dumps(cfg.to_dict()))):  # as written: tuples become lists
        raise ValueError(
            f"{str(out)!r} holds a run of another config (differs in {diff}) with no last.pt to resume; use the same "
            "settings, or overwrite it"
        )


def _train(cfg, out, d, resume, init_from, progress, stop_after, time_limit, validate_at_stop) -> dict[str, Any]:
    check_batch(cfg, d.world)
    start = load_trained(init_from, cfg.kind) if init_from is not None else None  # checks the kind first
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if start is not None:
        try:
            model.load_state_dict(start.state_dict())
        except RuntimeError as e:  # sizes differ: another num_mem_tokens, d_mem or backbone
            first = str(e).strip().splitlines()
            raise ValueError(f"init_from {str(init_from)!r} does not fit this config: {' '.join(first[:3])}") from None
    model.to(d.device)
    state = None
    last = out / "last.pt"
    if resume and last.is_file():
        state = load_state(last, cfg.kind, d.world)
        if diff := _config_diff(TrainConfig.from_dict(state["config"]).to_dict(), cfg.to_dict()):
            raise ValueError(
                f"{str(last)!r} was written with another config (differs in {diff}); use the same settings"
            )
        model.load_state_dict(state["model"])
    elif resume:
        _check_no_other_run(out, cfg)
    pos: Position = state["position"] if state else Position()
    if cfg.train_data:
        data = OfficialData(cfg.train_data, cfg.task, cfg.segment_size, cfg.seed)
    else:
        data = GeneratedData(cfg.task, cfg.segment_size, cfg.seed, cfg.pool_size, max_facts=cfg.max_facts)
    # Every segment count the curriculum can draw, and every stage's validation, has a sample: a failure now, not
    # hours into a run.
    data.check(([0] if cfg.stages[0] == 0 else []) + list(range(1, cfg.stages[-1] + 1)))
    for n in cfg.stages:
        check_validation(cfg.task, n * cfg.segment_size, split=cfg.eval_split, seed=cfg.eval_seed)
    if d.main:  # after the checks: a run they stop leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "config.json.tmp"  # replaced whole: other processes may be reading the old one
        tmp.write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, out / "config.json")
    if state is not None and pos.step == 0:
        state = None  # saved at a stage end: the next stage starts afresh from the best weights
    ddp = dd.wrap(LossModule(model, cfg), d)
    total = sum(cfg.stage_steps(i) for i in range(len(cfg.stages)))
    book = Logbook(out, d.main, pos.global_step, total, progress, cfg.log_every)
    if resume and state is None and pos.global_step == 0:
        book.line(f"nothing to resume in {str(out)!r} (no last.pt): starting from step 0")
    losses: list[float] = []
    t_call = time.perf_counter()
    t_start = t_call - pos.seconds
    try:
        while pos.stage_index < len(cfg.stages):
            si = pos.stage_index
            n, steps = cfg.stages[si], cfg.stage_steps(si)
            if state is None and pos.step == 0:
                if si > 0:
                    model.load_state_dict(load_trained(out / f"stage{cfg.stages[si - 1]}.pt", cfg.kind).state_dict())
                seed_stage(cfg.seed, si, d.rank, d.device)
            warm = warmup_steps(cfg.warmup, steps)
            opt, sched = make_optimizer(model, cfg.lr, cfg.weight_decay, warm, int(cfg.decay_factor * steps))
            if state is not None:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                set_rng_state(state["rng"][d.rank], d.device)
                state = None
            what = "the facts alone" if n == 0 else f"samples of 1..{n} segments"
            book.line(f"stage {n} ({si + 1}/{len(cfg.stages)}): up to {steps} steps, {what}")
            stage_done = False
            while pos.step < steps and not stage_done:
                if stop_after is not None and pos.global_step >= stop_after:
                    return _summary(losses, pos, t_start)
                grad_norm, loss, lr = _step(cfg, ddp, model, opt, sched, data, n, pos.step, d)
                pos.step += 1
                pos.global_step += 1
                losses.append(loss)
                row = {
                    "global_step": pos.global_step, "stage": n, "step": pos.step, "loss": loss,
                    "lr": lr, "grad_norm": grad_norm, "samples": pos.step * cfg.batch_size,
                    "seconds": round(time.perf_counter() - t_start, 3),
                }
                out_of_time = time_limit is not None and _elapsed(d, t_call) > time_limit
                if pos.step % cfg.eval_every == 0 or pos.step == steps or (out_of_time and validate_at_stop):
                    acc = _validate(cfg, model, n, d)
                    row["valid_accuracy"] = acc
                    pos.valid.append({"global_step": pos.global_step, "stage": n, "step": pos.step, "accuracy": acc})
                    if acc > pos.best:
                        pos.best, pos.bad_evals = acc, 0
                        if d.main:
                            path = save_trained(model, cfg, out / f"stage{n}.pt")
                            shutil.copyfile(path, out / "best.pt")
                    else:
                        pos.bad_evals += 1
                    target = cfg.stage_target(si)
                    if target is not None and acc >= target:
                        book.line(f"stage {n}: target {target}% reached ({acc:.1f}%) at step {pos.step}")
                        stage_done = True
                    elif cfg.patience is not None and pos.bad_evals >= cfg.patience:
                        book.line(
                            f"stage {n}: no improvement in {cfg.patience} validations, stopping at step {pos.step}"
                        )
                        stage_done = True
                book.step(row)
                stage_done = stage_done or pos.step == steps
                if stage_done:
                    pos.next_stage()
                if stage_done or out_of_time or pos.step % cfg.save_every == 0:
                    pos.seconds = time.perf_counter() - t_start
                    _save(out, cfg, model, opt, sched, pos, d)
                if out_of_time:
                    book.line(f"time limit of {time_limit:.0f} s reached at step {pos.global_step}; stopping")
                    return _summary(losses, pos, t_start)
    finally:
        book.close()
    return _summary(losses, pos, t_start)


def _summary(losses, pos, t_start) -> dict[str, Any]:
    return {"losses": losses, "valid": list(pos.valid), "position": pos, "seconds": time.perf_counter() - t_start}


def _elapsed(d: dd.Dist, t_start: float) -> float:
    """Seconds since ``t_start``, rank 0's value on every rank (so all ranks stop together)."""
    el = time.perf_counter() - t_start
    return dd.all_sum(d, [el if d.main else 0.0])[0]


def _step(cfg, ddp, model, opt, sched, data, n, step, d) -> tuple[float, float, float]:
    """One optimizer step; returns ``(gradient norm before clipping, global-batch loss, learning rate used)``."""
    model.train()
    micro = _micro_batches(cfg, data, n, step, d)
    local_count = sum(e.num_scored for mb in micro for e in mb)
    (global_count,) = dd.all_sum(d, [local_count])
    scale = d.world / global_count
    loss_sum = torch.zeros((), dtype=torch.float64)
    for j, mb in enumerate(micro):
        batch = {k: v.to(d.device) for k, v in collate(mb).items()}
        sync = contextlib.nullcontext() if (not d.active or j == len(micro) - 1) else ddp.no_sync()
        with sync:
            with _autocast(cfg, d.device):
                lsum = ddp(batch["input_ids"], batch["attention_mask"], batch["labels_mask"])
            (lsum * scale).backward()
        loss_sum += lsum.detach().double().cpu()
    params = [p for p in model.parameters() if p.grad is not None]
    if cfg.clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    (total,) = dd.all_sum(d, [float(loss_sum)])
    return float(norm), total / global_count, lr


def _validate(cfg: TrainConfig, model, n: int, d: dd.Dist) -> float:
    rows = evaluate(
        model, cfg.kind, cfg.task, [n * cfg.segment_size], cfg.eval_n, split=cfg.eval_split, seed=cfg.eval_seed, d=d,
    )
    model.train()
    return rows[0]["accuracy"]


def _save(out, cfg, model, opt, sched, pos, d) -> None:
    rng = dd.gather_objects(d, rng_state(d.device))
    if d.main:
        save_state(
            out / "last.pt", kind=cfg.kind, config=cfg.to_dict(), model=model, optimizer=opt, scheduler=sched,
            position=pos, rng=rng,
        )
    dd.barrier(d)

