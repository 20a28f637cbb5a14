"""Scaling laws: fit L(N, D) = E + A / N^alpha + B / D^beta to final losses (Chinchilla Approach 3) and
parabolas per compute budget (Approach 2), as plain functions usable alone.

Sources: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv 2203.15556),
section 3.3 and appendix D.2: Huber loss (delta 1e-3) on the log of the predicted loss, L-BFGS from a
grid of starting points; Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"
(arXiv 2404.10102): the same fit, run to convergence, with bootstrap intervals.

Units: N parameters, D training tokens, L loss in nats per token, C FLOPs.

Below the fitters, `gptforge scaling` (``scaling``): an isoFLOP grid of runs trained with
gptforge.train, both fits on their final validation losses, and a held-out run at a larger budget
whose loss the fit predicts before it is trained (AI2's model ladders report such a prediction's
absolute error). OUT receives ``tokenizer.json``, ``data/`` (the shards), one run directory per run
(``C<budget>-d<depth>``, ``heldout-d<depth>``), and ``scaling.md``, ``scaling.png``, ``scaling.json``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gptforge.config import check, setting
from gptforge.io import atomic_write, empty_out_dir, write_json

if TYPE_CHECKING:  # numpy is imported where used: `gptforge scaling --help` must not pay for it
    import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta


@functools.cache
def start_grid():
    """Hoffmann et al.'s grid of starts, shape (4500, 5), columns a, b, e, alpha, beta: alpha, beta in
    {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (A = exp(a), B = exp(b),
    E = exp(e))."""
    import numpy as np

    return np.array(list(itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0),
                                           np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5),
                                           np.arange(0, 2.5, 0.5))))


@dataclass
class LawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta (nats per token); objective: the Huber loss at the optimum."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = 0.0

    def loss(self, N, D):
        """Predicted loss (nats/token) at N parameters and D tokens (scalars or arrays)."""
        import numpy as np

        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal_ratio(self, C: float) -> float:
        """Compute-optimal tokens per parameter D/N at C FLOPs, taking C = 6 N D (Hoffmann et al. eq. 4):
        N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6) / N_opt,
        G = (alpha A / (beta B))^(1/(alpha+beta))."""
        import numpy as np

        num, den = self.alpha * self.A, self.beta * self.B
        if num <= 0 or den <= 0:  # a degenerate fit (a bootstrap resample): no N term or no D term
            return float("inf") if num <= 0 else 0.0
        with np.errstate(over="ignore", divide="ignore"):
            G = np.float64(num / den) ** (1 / (self.alpha + self.beta))
            n_opt = G * np.float64(C / 6) ** (self.beta / (self.alpha + self.beta))
            return float((C / 6) / n_opt / n_opt)


def _huber_terms(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(Huber loss, its derivative) of residuals r, elementwise."""
    import numpy as np

    small = np.abs(r) <= delta
    return (np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)),
            np.where(small, r, delta * np.sign(r)))


def _objective(x: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float):
    """(sum of Huber losses of log L_pred - log L, gradient) at x = (a, b, e, alpha, beta); log L_pred is
    the log-sum-exp of a - alpha log N, b - beta log D and e (numerically stable, as Hoffmann et al.)."""
    import numpy as np

    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    m = terms.max(axis=0)
    w = np.exp(terms - m)
    pred = m + np.log(w.sum(axis=0))
    w /= w.sum(axis=0)  # d pred / d term
    h, dh = _huber_terms(pred - logL, delta)
    grad = np.array([np.sum(dh * w[0]), np.sum(dh * w[1]), np.sum(dh * w[2]),
                     np.sum(dh * w[0] * -logN), np.sum(dh * w[1] * -logD)])
    return h.sum(), grad


def _grid_objective(logN, logD, logL, delta: float) -> np.ndarray:
    """The objective at every row of start_grid() (vectorised), shape (len(start_grid()),)."""
    import numpy as np

    a, b, e, alpha, beta = (start_grid()[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(a), len(logN)))])
    pred = np.logaddexp.reduce(terms, axis=0)
    return _huber_terms(pred - logL, delta)[0].sum(axis=1)


def fit_law(N, D, L, delta: float = HUBER_DELTA, starts: int = 20) -> LawFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta (Approach 3, Hoffmann et al. 2022).

    N, D, L: 1-D arrays of equal length (parameters, tokens, final loss in nats/token; > 0), at least 5.
    The objective (Huber, ``delta``, on log L) is evaluated at every point of Hoffmann et al.'s grid
    of starts; L-BFGS (scipy) runs from the ``starts`` best of them, to tight tolerances (Besiroglu et
    al. found the original fit stopped early); the lowest optimum wins.

    Raises:
        ValueError: mismatched lengths, fewer than 5 points, or a non-positive value.
    """
    import numpy as np
    from scipy.optimize import minimize

    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    if not len(N) == len(D) == len(L) or len(N) < 5:
        raise ValueError(f"fit_law needs N, D, L of equal length >= 5, got {len(N)}, {len(D)}, {len(L)}")
    if min(N.min(), D.min(), L.min()) <= 0:
        raise ValueError("fit_law needs positive N, D and L")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    order = np.argsort(_grid_objective(logN, logD, logL, delta))[:starts]
    best = None
    for x0 in start_grid()[order]:
        res = minimize(_objective, x0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                       options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return LawFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                  beta=float(beta), objective=float(best.fun))


def bootstrap_law(N, D, L, n_boot: int = 200, seed: int = 0, level: float = 0.95,
                  ratio_at: float | None = None, starts: int = 5, on_fit=None) -> tuple[list[LawFit], dict]:
    """Refit on ``n_boot`` resamples of the points drawn with replacement (Besiroglu et al. 2024);
    return (the fits, {name: (lo, hi)}) with the central ``level`` interval of E, A, B, alpha, beta and,
    when ``ratio_at`` (FLOPs) is given, of the compute-optimal tokens per parameter there ("ratio"; inf
    for a bound where resamples' fits have no N term). ``on_fit(i, n_boot)``, when given, is called
    after each resample (progress)."""
    import numpy as np

    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    rng = np.random.default_rng(seed)
    fits = []
    for i in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        if len(np.unique(idx)) >= 5:  # five parameters need five distinct points
            fits.append(fit_law(N[idx], D[idx], L[idx], starts=starts))
        if on_fit:
            on_fit(i + 1, n_boot)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    values = {k: [getattr(f, k) for f in fits] for k in ("E", "A", "B", "alpha", "beta")}
    if ratio_at is not None:
        values["ratio"] = [f.optimal_ratio(ratio_at) for f in fits]
    # a percentile between two infinite ratios interpolates to nan: it is inf
    return fits, {k: tuple(float(x) if not (np.isnan(x) and np.isinf(v).any()) else math.inf
                           for x in np.percentile(v, q)) for k, v in values.items()}


def fit_parabola(N, L) -> float | None:
    """Approach 2 for one compute budget: fit L = c2 x^2 + c1 x + c0 with x = log N by least squares;
    return the N at its vertex, or None when the parabola opens downwards (no minimum). Needs >= 3
    points (ValueError otherwise)."""
    import numpy as np

    x, L = np.log(np.asarray(N, float)), np.asarray(L, float)
    if len(x) < 3:
        raise ValueError("a parabola needs at least 3 points")
    c2, c1, _ = np.polyfit(x, L, 2)
    return float(np.exp(-c1 / (2 * c2))) if c2 > 0 else None


# ----------------------------------------------------------------------------------------------
# `gptforge scaling`: an isoFLOP grid trained with gptforge.train, the two fits, a held-out run
#
# Budgets are C = 6 N D FLOPs (Kaplan et al. 2020; Hoffmann et al. 2022), N the parameters without
# the input embedding table (the lm_head is a matmul and counts; the N of the models' flops_per_token
# and of nanochat), D the training tokens. The project's own count (flops_per_token: 6 N plus the
# attention scores, PaLM appendix B) is recorded beside it for each run ("flops_attn").
#
# Sizes come from the depth dial: the width follows the depth, n_embd = ASPECT x depth, heads of
# ASPECT channels. ASPECT is 32 rather than nanochat's 64 (rounded up to heads of 128) so that the
# CPU-sized models are spread out: depth 1..5 -> about 14k, 100k, 340k, 800k, 1.5M parameters with
# the char tokenizer. The recipe is the speedrun's `cpu` one (Muon, wsd, no dropout; gptforge.speedrun),
# its schedule (warmup, warmdown) fitted to each run's step count, on one thread (at these sizes the
# fastest: 6 against 46 ms a step at depth 1, 87 against 612 at depth 4, on a loaded 2-core machine).
# Batch and learning rates follow the depth dial's rules (train.config.depth_dial: tokens a step
# proportional to D^0.383, lr and muon_lr to the square root of the tokens a step), but from a CPU
# reference: the cpu recipe's learning rates at REF_BATCH tokens a step for REF_TOKENS training tokens
# (the dial's own reference, 2^19 tokens a step at nanochat's d12, would give ~20x lower rates here).

ASPECT = 32
BLOCK = 64  # context (tokens); short, so the attention FLOPs that 6 N D leaves out stay small
REF_BATCH, REF_TOKENS = 1024, 2**20  # tokens a step at which the cpu recipe's learning rates hold
BATCHES = (4, 64)  # the least and most sequences of BLOCK tokens per step
EVAL_TOKENS = 16384  # the validation subset every run is scored on


@dataclass
class Grid:
    """An isoFLOP grid: model depths x compute budgets (FLOPs, C = 6 N D), the held-out budget as a
    multiple of the largest, and the bootstrap resamples of the fit."""

    depths: tuple[int, ...]
    budgets: tuple[float, ...]
    heldout_factor: float = 4.0
    boot: int = 200


# boot: the bootstrap's refits are slow on a loaded CPU (1-3 s each with 2 starts), hence few in --quick
GRIDS = {"quick": Grid((1, 2, 3), (3e10, 6e10, 1.2e11), heldout_factor=2.0, boot=30),
         "full": Grid((1, 2, 3, 4, 5), (1e11, 2e11, 4e11, 8e11), heldout_factor=4.0, boot=100)}


@dataclass
class ScalingConfig:
    """The settings of `gptforge scaling`."""

    corpus: str = setting("shakespeare",
                          "'shakespeare' (built in), a .txt/.jsonl file, a directory or a glob")
    quick: bool = setting(False, "3 budgets x 3 depths and a held-out run at 2x the largest budget (about "
                                 "a minute on 2 CPU cores) instead of 4 x 5 and 4x (about 6)")
    tokenizer: str = setting("char", "'char', or 'bpe:N' (its N-row output layer then dominates the small "
                                     "models' parameters)")
    out: str = setting("", "output folder; empty -> runs/scaling-<YYYYmmdd-HHMMSS>", metavar="DIR")
    seed: int = setting(1337, "seed of the inits, batches and bootstrap", ge=0, le=2**32 - 1)

    def __post_init__(self):
        check(self, "scaling")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_size(depth: int, vocab_size: int) -> dict:
    """The dial's model at ``depth``: {"depth", "n_embd", "params" (N, without the input embeddings),
    "params_all" (every parameter), "flops_per_token" (6 N + attention)}; shapes only (meta device)."""
    import torch

    from gptforge.models import build_model

    n_embd = ASPECT * depth
    with torch.device("meta"):
        m = build_model("gpt", vocab_size, BLOCK, preset="modern", depth=depth, n_embd=n_embd, n_head=depth)
    return {"depth": depth, "n_embd": n_embd, "params": m.num_params(exclude_embeddings=True),
            "params_all": m.num_params(), "flops_per_token": m.flops_per_token()}


def plan_run(budget: float, params: int) -> tuple[int, int]:
    """(batch_size, steps) that spend ``budget`` FLOPs (C = 6 N D) on a model of ``params`` parameters:
    D = C / 6N tokens in steps of B x BLOCK tokens, B x BLOCK = REF_BATCH x (D / REF_TOKENS)^0.383
    (Power Lines, arXiv:2505.13738, as the depth dial) with B a power of 2 within BATCHES. The FLOPs
    then spent are within 1 / (2 steps) of the budget."""
    tokens = budget / (6 * params)
    b = 2 ** round(math.log2(REF_BATCH * (tokens / REF_TOKENS) ** 0.383 / BLOCK))
    b = min(max(b, BATCHES[0]), BATCHES[1])
    return b, max(1, round(tokens / (b * BLOCK)))


def _run_config(size: dict, budget: float, data: Path, out: Path, seed: int, progress: bool):
    """The TrainConfig of one run: the speedrun's cpu recipe at this depth, planned by `plan_run`, its
    learning rates scaled to the batch."""
    from gptforge.speedrun import CPU
    from gptforge.train import make_config

    batch, steps = plan_run(budget, size["params"])
    scale = math.sqrt(batch * BLOCK / REF_BATCH)  # the square-root rule, as the depth dial
    return make_config(CPU, {"depth": size["depth"], "block_size": BLOCK, "batch_size": batch,
                             "lr": CPU["lr"] * scale, "muon_lr": CPU["muon_lr"] * scale,
                             "model": {"n_embd": size["n_embd"], "n_head": size["depth"], "dropout": 0.0},
                             "max_steps": steps, "warmup_steps": min(20, steps // 10),
                             "eval_interval": steps, "eval_tokens": EVAL_TOKENS, "ckpt_interval": 1 << 62,
                             "keep_last": 0, "seed": seed, "data": str(data), "out": str(out), "threads": 1,
                             "progress": "auto" if progress else "none"}, where="scaling")


def _train_run(size: dict, budget: float, data: Path, out: Path, sc: ScalingConfig, progress: bool,
               head: str) -> dict:
    """Train one run of the grid and return its row (see `scaling`)."""
    from gptforge.train import train

    cfg = _run_config(size, budget, data, out, sc.seed, progress)
    _say(f"{head} depth {size['depth']} ({size['params']:,} parameters), budget {budget:.3g} FLOPs: "
         f"{cfg.max_steps} steps of {cfg.batch_size} x {BLOCK} tokens -> {out}")
    t0 = time.time()
    summary = train(cfg)
    if summary["stopped_by"] == "signal":
        _say(f"interrupted: saved at step {summary['step']} in {out}")
        raise KeyboardInterrupt
    row = {**size, "budget": budget, "batch_size": cfg.batch_size, "steps": summary["step"],
           "tokens": summary["tokens"], "flops": 6 * size["params"] * summary["tokens"],
           "flops_attn": size["flops_per_token"] * summary["tokens"], "val_loss": summary["val_loss"],
           "val_bpb": summary["val_bpb"], "train_s": summary["train_time_s"], "wall_s": time.time() - t0,
           "run_dir": summary["run_dir"]}
    _say(f"{head} -> val loss {row['val_loss']:.4f} nats/token, {row['val_bpb']:.4f} bits/byte "
         f"({row['wall_s']:.0f} s)")
    return row


def n_opt(law: LawFit, C: float) -> float:
    """The law's compute-optimal N at C FLOPs (C = 6 N D): sqrt(C / 6 / optimal_ratio); 0 when the fit
    has no N term, inf when it has no D term."""
    ratio = law.optimal_ratio(C)
    return 0.0 if math.isinf(ratio) else math.inf if ratio <= 0 else math.sqrt(C / 6 / ratio)


def fit_grid(rows: list[dict], budgets, heldout_budget: float, boot: int, seed: int
             ) -> tuple[LawFit, list, dict]:
    """Approach 3 on the grid's runs: (the fit, its bootstrap fits, a dict of ``law`` (E, A, B, alpha,
    beta), ``intervals`` (95%: those and "ratio", the compute-optimal D/N at ``heldout_budget``) and
    ``per_budget``: for each budget, N_opt and D/N by Approach 3 and by Approach 2 (a parabola in
    log N; None when it opens downwards or has under 3 points))."""
    import numpy as np

    N, D, L = (np.array([r[k] for r in rows], float) for k in ("params", "tokens", "val_loss"))
    law = fit_law(N, D, L)
    def on_fit(i, n):
        if i % 10 == 0 or i == n:
            _say(f"[fit] bootstrap {i}/{n}")

    fits, intervals = bootstrap_law(N, D, L, n_boot=boot, seed=seed, ratio_at=heldout_budget, starts=2,
                                    on_fit=on_fit)
    per_budget = []
    for c in budgets:
        pts = [r for r in rows if r["budget"] == c]
        n2 = fit_parabola([r["params"] for r in pts], [r["val_loss"] for r in pts]) if len(pts) >= 3 else None
        n3 = n_opt(law, c)
        sampled = [r["params"] for r in pts]
        per_budget.append({"budget": c, "n_opt3": n3, "ratio3": law.optimal_ratio(c), "n_opt2": n2,
                           "ratio2": c / 6 / n2 / n2 if n2 else None,
                           "n_opt2_inside": bool(n2 and min(sampled) <= n2 <= max(sampled))})
    return law, fits, {"law": {k: getattr(law, k) for k in ("E", "A", "B", "alpha", "beta")},
                       "intervals": intervals, "per_budget": per_budget}


def predict(law: LawFit, fits: list[LawFit], sizes: list[dict], budget: float) -> dict:
    """The held-out run: the size among ``sizes`` nearest (in log N) the law's compute-optimal N at
    ``budget``, its tokens D = budget / 6N, and the predicted loss with the bootstrap fits' 95% interval."""
    import numpy as np

    best = n_opt(law, budget)
    size = min(sizes, key=lambda s: abs(np.log(s["params"]) - np.log(best)))
    D = budget / (6 * size["params"])
    boot = np.array([f.loss(size["params"], D) for f in fits], float)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    return {"budget": budget, "n_opt": best, "depth": size["depth"], "params": size["params"],
            "tokens_planned": D, "pred_loss": float(law.loss(size["params"], D)),
            "pred_interval": [float(lo), float(hi)]}


def scaling(sc: ScalingConfig, grid: Grid | None = None, progress: bool = True) -> dict:
    """Run `gptforge scaling`: build the tokenizer and shards in OUT, train the isoFLOP grid (GRIDS,
    or ``grid``), fit Approach 3 with bootstrap intervals and Approach 2, predict the held-out run,
    train it, and write OUT/scaling.md, scaling.png and scaling.json. Returns what scaling.json holds:
    ``config``, ``grid``, ``date``, ``cpus``, ``seconds``, ``params_note``, ``runs`` (one dict per run:
    depth, n_embd, params (N, no input embeddings), params_all, flops_per_token, budget, batch_size,
    steps, tokens, flops (6 N D), flops_attn (the project's count), val_loss (nats/token), val_bpb,
    train_s, wall_s, run_dir), ``fit`` (see `fit_grid`) and ``heldout`` (see `predict`, plus the
    measured run and the absolute errors in nats/token and bits/byte).

    Raises:
        UserError: a bad corpus or an output folder that is not empty.
        KeyboardInterrupt: Ctrl-C / SIGTERM during training (the run being trained is saved first).
    """
    import numpy as np

    from gptforge.data.corpus import open_corpus
    from gptforge.data.shards import prepare
    from gptforge.speedrun import build_tokenizer

    grid = grid or GRIDS["quick" if sc.quick else "full"]
    out = empty_out_dir(sc.out, "scaling")
    open_corpus(sc.corpus)  # a missing corpus fails before anything is built
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    _say(f"[data] tokenizer ({sc.tokenizer}) on {sc.corpus}, token shards -> {out / 'data'}")
    tok, _ = build_tokenizer(sc.tokenizer, sc.corpus, progress and sys.stderr.isatty())
    tok.save(out / "tokenizer.json")
    prepare(sc.corpus, tok, out / "data", progress=progress and sys.stderr.isatty())
    sizes = [model_size(d, tok.vocab_size) for d in range(1, max(grid.depths) + 2)]
    n_runs = len(grid.depths) * len(grid.budgets) + 1
    rows = []
    for c in grid.budgets:
        for d in grid.depths:
            rows.append(_train_run(sizes[d - 1], c, out / "data", out / f"C{c:.3g}-d{d}", sc, progress,
                                   f"[{len(rows) + 1}/{n_runs}]"))
    heldout_budget = grid.heldout_factor * max(grid.budgets)
    _say(f"[fit] Approach 3 on {len(rows)} runs, {grid.boot} bootstrap resamples; Approach 2 per budget")
    law, fits, fit = fit_grid(rows, grid.budgets, heldout_budget, grid.boot, sc.seed)
    bpb_per_nat = float(np.mean([r["val_bpb"] / r["val_loss"] for r in rows]))  # same subset: a constant
    held = predict(law, fits, sizes, heldout_budget)
    lo, hi = held["pred_interval"]
    _say(f"[predict] {heldout_budget:.3g} FLOPs ({grid.heldout_factor:g}x the largest budget): "
         f"compute-optimal N {held['n_opt']:,.0f} -> depth {held['depth']} ({held['params']:,} parameters); "
         f"predicted val loss {held['pred_loss']:.4f} nats/token (95% {lo:.4f}-{hi:.4f}), "
         f"{held['pred_loss'] * bpb_per_nat:.4f} bits/byte, before training it")
    run = _train_run(sizes[held["depth"] - 1], heldout_budget, out / "data",
                     out / f"heldout-d{held['depth']}", sc, progress, f"[{n_runs}/{n_runs}] held-out:")
    held.update(run=run, bpb_per_nat=bpb_per_nat, abs_err_loss=abs(run["val_loss"] - held["pred_loss"]),
                abs_err_bpb=abs(run["val_bpb"] - held["pred_loss"] * bpb_per_nat),
                inside=bool(lo <= run["val_loss"] <= hi))
    record = {"config": asdict(sc), "grid": asdict(grid),
              "date": datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "seconds": time.time() - t_all, "params_note": PARAMS_NOTE, "flops_note": FLOPS_NOTE,
              "runs": rows, "fit": fit, "heldout": held}
    write_json(out / "scaling.json", record)
    atomic_write(out / "scaling.md", scaling_markdown(record))
    plot_scaling(record, law, out / "scaling.png")
    _say(heldout_summary(record))
    _say(f"done in {record['seconds']:.0f} s: {out / 'scaling.md'}, scaling.png, scaling.json")
    return record


PARAMS_NOTE = ("N counts every parameter except the input embedding table (the lm_head, a matmul, is "
               "counted), as the models' flops_per_token does; 'N all' includes the embeddings.")
FLOPS_NOTE = ("Budgets are C = 6 N D FLOPs (D training tokens). 'FLOPs +attn' is the project's own count, "
              "flops_per_token x D: 6 N plus the attention scores (PaLM appendix B).")


def heldout_summary(record: dict) -> str:
    """The held-out prediction against the measurement, in two lines."""
    h, run = record["heldout"], record["heldout"]["run"]
    lo, hi = h["pred_interval"]
    k = h["bpb_per_nat"]
    return (f"held-out: depth {h['depth']} at {h['budget']:.3g} FLOPs: predicted {h['pred_loss']:.4f} "
            f"nats/token (95% {lo:.4f}-{hi:.4f}), measured {run['val_loss']:.4f}, |error| "
            f"{h['abs_err_loss']:.4f} ({'inside' if h['inside'] else 'outside'} the interval)\n"
            f"          in bits/byte: predicted {h['pred_loss'] * k:.4f} ({lo * k:.4f}-{hi * k:.4f}), "
            f"measured {run['val_bpb']:.4f}, |error| {h['abs_err_bpb']:.4f}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, the first column left-aligned and the others right."""
    return (["| " + " | ".join(header) + " |", "|---|" + "|".join("---:" for _ in header[1:]) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def scaling_markdown(record: dict) -> str:
    """scaling.md: the runs, the Approach 3 law with its intervals, Approach 2 beside it, the held-out
    prediction."""
    sc, fit, h = record["config"], record["fit"], record["heldout"]
    iv = fit["intervals"]
    runs = [[f"{r['budget']:.3g}", str(r["depth"]), str(r["n_embd"]), f"{r['params']:,}",
             f"{r['params_all']:,}", f"{r['tokens']:,}", f"{r['tokens'] / r['params']:.3g}",
             f"{r['batch_size']} x {r['steps']}",
             f"{r['flops'] / r['budget'] - 1:+.1%}", f"{r['flops_attn']:.3g}", f"{r['val_loss']:.4f}",
             f"{r['val_bpb']:.4f}", f"{r['train_s']:.1f}"] for r in record["runs"]]
    law = [[k, f"{fit['law'][k]:.4g}", f"{iv[k][0]:.4g} - {iv[k][1]:.4g}"]
           for k in ("E", "A", "B", "alpha", "beta")]
    ratio = [f"compute-optimal D/N at {h['budget']:.3g} FLOPs", f"{h['budget'] / 6 / h['n_opt'] ** 2:.4g}"
             if h["n_opt"] else "inf",
             f"{iv['ratio'][0]:.4g} - {iv['ratio'][1]:.4g}"]
    per = [[f"{p['budget']:.3g}", f"{p['n_opt3']:,.0f}", f"{p['ratio3']:.3g}",
            (f"{p['n_opt2']:,.0f}" + ("" if p["n_opt2_inside"] else " (outside)")) if p["n_opt2"]
            else "no minimum",
            f"{p['ratio2']:.3g}" if p["ratio2"] else "-"]
           for p in fit["per_budget"]]
    lo, hi = h["pred_interval"]
    k, run = h["bpb_per_nat"], h["run"]
    held = [["val loss (nats/token)", f"{h['pred_loss']:.4f}", f"{lo:.4f} - {hi:.4f}",
             f"{run['val_loss']:.4f}", f"{h['abs_err_loss']:.4f}"],
            ["val bits/byte", f"{h['pred_loss'] * k:.4f}", f"{lo * k:.4f} - {hi * k:.4f}",
             f"{run['val_bpb']:.4f}", f"{h['abs_err_bpb']:.4f}"]]
    g = record["grid"]
    return "\n".join([
        f"# Scaling laws on {sc['corpus']}: an isoFLOP grid, two fits and a held-out prediction", "",
        f"{record['date']}, {record['cpus']} CPUs; tokenizer {sc['tokenizer']}; {len(g['budgets'])} budgets "
        f"x {len(g['depths'])} depths (n_embd = {ASPECT} x depth), {EVAL_TOKENS:,} validation tokens per "
        f"run; {record['seconds']:.0f} s in all.", "",
        record["params_note"], record["flops_note"], "", "## Runs", "",
        *_table(["budget (FLOPs)", "depth", "n_embd", "N", "N all", "tokens D", "D/N", "B x steps",
                 "6ND vs budget", "FLOPs +attn", "val loss", "val bpb", "train s"], runs), "",
        "## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta", "",
        "Huber (delta 1e-3) on log loss, L-BFGS from Hoffmann et al.'s grid of starts; 95% percentile "
        f"intervals from {g['boot']} bootstrap resamples of the runs (Besiroglu et al. 2024). Loss in "
        "nats/token.", "", *_table(["", "fit", "95% interval"], law + [ratio]), "",
        "## Compute-optimal size per budget: Approach 3 against Approach 2", "",
        "Approach 2 fits a parabola in log N to each budget's losses and takes its vertex ('outside': "
        "beyond the sizes trained, an extrapolation). D/N at C: C / 6 N_opt^2.", "",
        *_table(["budget (FLOPs)", "N_opt (3)", "D/N (3)", "N_opt (2)", "D/N (2)"], per), "",
        "## Held-out prediction", "",
        f"Predicted before training: {h['budget']:.3g} FLOPs ({g['heldout_factor']:g}x the largest budget); "
        f"the law's compute-optimal N there is {h['n_opt']:,.0f}, the nearest depth is {h['depth']} "
        f"({h['params']:,} parameters, {run['tokens']:,} tokens). Bits/byte = nats/token x {k:.4f} "
        "(the validation subset's bytes per token, the same for every run).", "",
        *_table(["", "predicted", "95% interval", "measured", "abs. error"], held), "",
        f"The measurement is {'inside' if h['inside'] else 'outside'} the prediction's interval.", "",
        "![isoFLOP curves, the fitted frontier and the held-out run](scaling.png)", ""])


def plot_scaling(record: dict, law: LawFit, out: Path) -> Path:
    """scaling.png: val loss against N per budget (the runs as points, the law at D = C / 6N as
    curves), the compute-optimal frontier, and the held-out run (prediction with its interval, and
    the measurement)."""
    import matplotlib
    import numpy as np

    from gptforge.train.plot import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, h = record["runs"], record["heldout"]
    n_all = [r["params"] for r in runs] + [h["params"]]
    if 0 < h["n_opt"] < math.inf:  # show the frontier near the held-out run, within 100x of the grid
        n_all.append(min(max(h["n_opt"], min(n_all) / 100), max(n_all) * 100))
    n = np.geomspace(min(n_all) / 2, max(n_all) * 2, 200)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, c in enumerate(record["grid"]["budgets"]):
        pts = [r for r in runs if r["budget"] == c]
        ax.plot([r["params"] for r in pts], [r["val_loss"] for r in pts], "o", color=f"C{i}",
                label=f"{c:.2g} FLOPs")
        ax.plot(n, law.loss(n, c / (6 * n)), "-", color=f"C{i}", lw=1)
    c = h["budget"]
    ax.plot(n, law.loss(n, c / (6 * n)), "--", color="k", lw=1, label=f"{c:.2g} FLOPs (held out): the law")
    lo, hi = h["pred_interval"]
    yerr = [[max(0.0, h["pred_loss"] - lo)], [max(0.0, hi - h["pred_loss"])]]  # the fit may lie outside
    ax.errorbar([h["params"]], [h["pred_loss"]], yerr=yerr, fmt="D", color="k", mfc="white", capsize=4,
                label="predicted (95% interval)")
    ax.plot([h["params"]], [h["run"]["val_loss"]], "*", color="crimson", ms=12, label="measured")
    cs = np.geomspace(min(record["grid"]["budgets"]) / 2, c * 2, 50)
    front = np.array([n_opt(law, x) for x in cs])
    keep = (front > n[0]) & (front < n[-1])
    ax.plot(front[keep], law.loss(front[keep], cs[keep] / (6 * front[keep])), ":", color="grey", lw=2,
            label="compute-optimal frontier" + ("" if keep.any() else " (outside the plot)"))
    ax.set_xscale("log")
    ax.set(xlabel="parameters N (without input embeddings)", ylabel="validation loss (nats/token)",
           title=f"isoFLOP curves on {record['config']['corpus']} (Approach 3 fit)")
    return save_png(fig, (ax,), out)
