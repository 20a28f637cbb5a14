"""`gptforge doctor`: the common-mistakes checklist, run for real on a config's data and model.

Source: Andrej Karpathy, "A Recipe for Training Neural Networks" (2019): verify the loss at init,
overfit one batch, check train/eval mode, zero_grad, pass logits (not probabilities) to the loss,
look at the data right before it enters the network, and keep validation data out of training.

Every check is a plain function over the objects it examines (a model, a batch source, token
arrays, a tokenizer) and returns a ``Check``: PASS, WARN or FAIL with a one-line reason (SKIP where
it does not apply). Tests hand each one a deliberately broken object; ``run_doctor`` hands them the
real ones built from a ``TrainConfig``. A batch source is anything with ``get(index, device) ->
(x, y)`` (``PretrainBatches``, ``SFTBatches``); ``loss_fn(model, (x, y)) -> (loss, stats)``, loss
in nats per scored token, as in the training loop. Optimizer steps are the training loop's own
(``gptforge.train.step.optimizer_step``), so a step that lost its ``zero_grad`` fails here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.data.corpus import open_corpus
from gptforge.data.shards import document_spans, open_shards
from gptforge.errors import UserError
from gptforge.models import eval_mode
from gptforge.train import step
from gptforge.train.batches import lm_loss

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


@dataclass
class Check:
    """One checklist item: ``status`` is PASS, WARN, FAIL or SKIP; ``reason`` one line; ``seconds``
    what the check took."""

    name: str
    status: str
    reason: str
    seconds: float = 0.0


# --- the model ---------------------------------------------------------------------------------------
@torch.no_grad()
def check_initial_loss(model: torch.nn.Module, batch, vocab_size: int, loss_fn: Callable = lm_loss,
                       pretrained: bool = False) -> Check:
    """A fresh model should be unsure of every token: loss ~ ln V nats (uniform over V ids).

    Far above ln V: the init is confidently wrong (large output weights); far below: the targets
    can be seen in the inputs. ``pretrained``: the model starts from a checkpoint (SFT), where a
    loss below ln V is expected, so only the value is reported.
    """
    with eval_mode(model):
        loss = float(loss_fn(model, batch)[0])
    ln_v, name = math.log(vocab_size), "initial loss"
    msg = f"loss {loss:.3f} nats at step 0, ln V = {ln_v:.3f}"
    if not math.isfinite(loss):
        return Check(name, FAIL, f"{msg}: not finite")
    if pretrained:
        return Check(name, PASS if loss < ln_v else WARN,
                     f"{msg} (starts from a checkpoint, so it should be below ln V)")
    if loss > ln_v + 1.0:
        return Check(name, FAIL, f"{msg}: the init is confidently wrong (output weights too large?)")
    if loss < ln_v - 1.0:
        return Check(name, FAIL, f"{msg}: an untrained model cannot know this much; are the targets visible "
                                 "in the inputs?")
    if abs(loss - ln_v) > 0.3:
        return Check(name, WARN, f"{msg}: off by {loss - ln_v:+.2f}")
    return Check(name, PASS, msg)


def check_logits(model: torch.nn.Module, batch) -> Check:
    """The loss must receive logits, not probabilities: ``model(x, y) -> (logits, loss)``.

    FAIL when the returned rows look like probabilities (all >= 0, summing to 1), or when the loss
    is not the cross-entropy of the returned logits. At init the logits are near 0, where
    ``CE(softmax(z))`` and ``CE(z)`` have almost the same value, so the gradient is compared too: for
    cross-entropy on logits, d loss / d z = (softmax(z) - onehot(y)) / n_scored exactly; a softmax in
    between shrinks it ~V-fold. Log-probabilities pass: log_softmax of them is themselves.
    """
    x, y = batch
    with eval_mode(model), torch.enable_grad():
        logits, loss = model(x, y)
        grad = torch.autograd.grad(loss, logits)[0].float() if loss is not None and loss.requires_grad \
            else None
    logits = logits.detach().float()
    sums = logits.sum(-1)
    name = "logits, not probabilities"
    if bool((logits >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        return Check(name, FAIL, "forward returns probabilities (rows >= 0 summing to 1): softmax before the "
                                 "loss; cross_entropy applies log_softmax itself")
    ce = float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1))
    loss = None if loss is None else loss.detach()
    if loss is not None and abs(float(loss) - ce) > 1e-3 * max(1.0, abs(ce)):
        return Check(name, FAIL, f"the model's loss {float(loss):.4f} is not the cross-entropy of its logits "
                                 f"{ce:.4f}: something (a softmax?) sits between them")
    if grad is not None:
        scored = (y != -1).unsqueeze(-1)
        want = (F.softmax(logits, -1) - F.one_hot(y.clamp(min=0), logits.size(-1))) * scored / scored.sum()
        err = float((grad - want).norm() / want.norm().clamp(min=1e-12))
        if err > 0.01:
            return Check(name, FAIL, f"d loss / d logits is off by {err:.0%} from cross-entropy's "
                                     "(softmax - onehot): the loss does not see these logits directly")
    lo, hi = float(logits.min()), float(logits.max())
    return Check(name, PASS, f"logits in [{lo:.2f}, {hi:.2f}]; loss and its gradient = their cross-entropy's")


def check_overfit_one_batch(model: torch.nn.Module, batch, loss_fn: Callable = lm_loss, steps: int = 60,
                            lr: float = 1e-2, target: float = 0.5) -> Check:
    """A copy of the model, trained with AdamW on one small batch, should drive its loss to near zero
    (below ``target`` nats) within ``steps`` steps; if it cannot memorise 4 rows, something is wired
    wrong (a softmax before the loss, a detached tensor, a frozen layer, a bad mask).

    Dropout is switched off (eval mode) for this: it would only slow memorisation, and gradients
    flow the same. ``model`` itself is left untouched.
    """
    m = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
    first = last = None
    for _ in range(steps):
        last = float(step.optimizer_step(m, [opt], lambda i: batch, 1, loss_fn).loss)
        first = last if first is None else first
        if last < target / 2:
            break
    with torch.no_grad():
        last = float(loss_fn(m, batch)[0])
    msg = f"{first:.3f} -> {last:.3f} nats on {batch[0].shape[0]} rows x {batch[0].shape[1]} tokens"
    if not math.isfinite(last):
        msg, status = f"{msg}: loss became {last}", FAIL
    elif last < target:
        status = PASS
    elif last < first / 2:
        msg, status = f"{msg}: learning, but not below {target} in {steps} steps", WARN
    else:
        msg, status = f"{msg}: cannot memorise one batch", FAIL
    return Check("overfit one batch", status, msg)


@torch.no_grad()
def check_train_eval_mode(model: torch.nn.Module, batch) -> Check:
    """Eval mode must be deterministic (two forwards, different RNG states, equal logits) and, when
    the model has dropout, train mode must differ from it. The classic bug is ``F.dropout(x, p)``,
    whose ``training`` defaults to True whatever mode the module is in."""
    x, _ = batch

    def twice(train: bool) -> bool:
        model.train(train)
        torch.manual_seed(1)
        a = model(x)[0]
        torch.manual_seed(2)
        b = model(x)[0]
        return torch.equal(a, b)

    with eval_mode(model):  # restores the mode
        eval_same, train_same = twice(False), twice(True)
    dropout = (getattr(getattr(model, "config", None), "dropout", 0) or 0) > 0 or \
        any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    name = "train vs eval mode"
    if not eval_same:
        return Check(name, FAIL, "eval mode is not deterministic: dropout (or other randomness) still on in "
                                 "eval")
    if dropout and train_same:
        return Check(name, WARN, "dropout is configured but train mode is deterministic")
    return Check(name, PASS, "dropout active in train mode, off in eval; eval deterministic" if dropout
                 else "no dropout; eval deterministic")


# --- the optimizer step ----------------------------------------------------------------------------------
def check_zero_grad(model: torch.nn.Module, make_optimizers: Callable, batch, loss_fn: Callable = lm_loss,
                    step_fn: Callable | None = None) -> Check:
    """Gradients must not leak from one step into the next (``zero_grad``).

    A copy of the model takes two steps with ``step_fn(model, optimizers, batch, loss_fn)``
    (default: the training loop's ``optimizer_step``) on the same batch with the same RNG seed
    (same dropout) and every learning rate at 0 (weights fixed), so the gradient the optimizer sees
    must be the same both times; a missing ``zero_grad`` makes the second twice the first. The
    gradient is read by a pre-step hook on each optimizer; a step that never steps them fails.
    """
    take = step_fn or (lambda m, o, b, f: step.optimizer_step(m, o, lambda i: b, 1, f))
    m = copy.deepcopy(model).train()
    optimizers = make_optimizers(m)
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = 0.0
    seen: list[float] = []

    def hook(opt, args, kwargs):
        seen.append(sum(float(p.grad.double().square().sum()) for g in opt.param_groups for p in g["params"]
                        if p.grad is not None))

    handles = [opt.register_step_pre_hook(hook) for opt in optimizers]
    try:
        for _ in range(2):
            torch.manual_seed(0)
            take(m, optimizers, batch, loss_fn)
    finally:
        for h in handles:
            h.remove()
    k, name = len(optimizers), "zero_grad between steps"
    if len(seen) != 2 * k:
        return Check(name, FAIL, f"two steps ran optimizer.step() {len(seen)} times, not {2 * k}")
    g1, g2 = math.sqrt(sum(seen[:k])), math.sqrt(sum(seen[k:]))
    ratio = g2 / g1 if g1 > 0 else float("nan")
    msg = f"grad norm {g1:.4g} at step 1, {g2:.4g} at step 2 on the same batch with fixed weights"
    if not math.isfinite(ratio) or g1 == 0:
        return Check(name, FAIL, f"{msg}: no gradient reaches the parameters")
    if abs(ratio - 1) > 0.01:
        return Check(name, FAIL, f"{msg} (x{ratio:.2f}): gradients accumulate across steps; zero_grad "
                                 "missing?")
    return Check(name, PASS, msg)


# --- the data --------------------------------------------------------------------------------------------
def check_batches_vary(batches, accum: int = 1, world: int = 1, steps: int = 4) -> Check:
    """Consecutive training batches must differ (a loader stuck on one batch trains on B sequences)."""
    xs = [batches.get(i * world, "cpu")[0] for i in range(steps * accum)]  # rank 0's micro-batches
    same = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs)) if torch.equal(xs[i], xs[j])]
    if same:
        i, j = same[0]
        return Check("batches vary", FAIL, f"micro-batches {i} and {j} of the first {len(xs)} are identical: "
                                           "the loader repeats a batch")
    rows = torch.cat(xs)
    distinct = len({tuple(r.tolist()) for r in rows})
    if distinct < len(rows) // 2:
        return Check("batches vary", WARN, f"only {distinct} distinct rows in {len(rows)}")
    return Check("batches vary", PASS, f"{len(xs)} micro-batches, {distinct} distinct rows of {len(rows)}")


def check_targets_shifted(batches) -> Check:
    """Targets must be the inputs shifted by one (``y[t] = x[t + 1]`` wherever both are known) and
    some targets must be scored (not all -1)."""
    x, y = batches.get(0, "cpu")
    scored = y[:, :-1] != -1
    if not bool((y != -1).any()):
        return Check("targets = next tokens", FAIL, "no target is scored (every target is -1)")
    if bad := int(((y[:, :-1] != x[:, 1:]) & scored).sum()):
        return Check("targets = next tokens", FAIL,
                     f"{bad} of {int(scored.sum())} scored targets are not the next input token")
    frac = float((y != -1).float().mean())
    return Check("targets = next tokens", PASS, f"y[t] = x[t+1]; {frac:.0%} of targets scored")


def _ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every n-gram of ``tokens`` (polynomial, mod 2**64: wraparound is intended)."""
    t = np.asarray(tokens, dtype=np.uint64)
    if len(t) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(len(t) - n + 1, dtype=np.uint64)
    p = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * p + t[k:len(t) - n + 1 + k] + np.uint64(1)
    return h


def _docs(tokens: np.ndarray, sep: int | None) -> set[bytes]:
    """Hashable byte strings of the documents (runs between ``sep`` ids) of at least 8 tokens."""
    if sep is None:
        return set()
    t = np.asarray(tokens, dtype=np.int64)  # one dtype, so that equal documents have equal bytes
    return {t[a:b].tobytes() for a, b in document_spans(t, sep) if b - a >= 8}


def check_split_overlap(train: np.ndarray, val: np.ndarray, sep: int | None = None, n: int = 32,
                        max_train: int = 20_000_000, max_val: int = 200_000) -> Check:
    """Validation must not be training data: the share of validation n-grams (``n`` tokens, long
    enough that natural text rarely repeats one) found in the training split, and whole documents
    (runs between ``sep`` ids) shared by both.

    Bounded cost: at most ``max_train`` training tokens (evenly spaced pieces beyond that) and
    ``max_val`` validation n-grams are hashed; memory ~8 bytes per training token hashed.
    FAIL from 50% shared, WARN from 1%.
    """
    sampled = len(train) > max_train
    if sampled:
        piece = 1_000_000
        starts = np.linspace(0, len(train) - piece, max_train // piece).astype(np.int64)
        th = np.unique(np.concatenate([_ngram_hashes(train[s:s + piece], n) for s in starts]))
    else:
        th = np.unique(_ngram_hashes(train, n))
    vh = _ngram_hashes(val, n)
    if len(vh) > max_val:
        vh = vh[np.linspace(0, len(vh) - 1, max_val).astype(np.int64)]
    if len(vh) == 0:
        return Check("train/val overlap", WARN, f"the val split is shorter than {n} tokens")
    shared = float(np.isin(vh, th).mean())
    docs_val = _docs(val, sep)
    shared_docs = len(docs_val & _docs(train, sep)) if docs_val and not sampled else 0
    msg = (f"{shared:.1%} of val {n}-grams occur in train{' (a sample of it)' if sampled else ''}; "
           f"{shared_docs} of {len(docs_val)} val documents also in train")
    if shared >= 0.5 or (docs_val and shared_docs / len(docs_val) >= 0.5):
        return Check("train/val overlap", FAIL, f"{msg}: val is (mostly) a copy of train")
    if shared >= 0.01 or shared_docs:
        return Check("train/val overlap", WARN, f"{msg}: leakage inflates val scores")
    return Check("train/val overlap", PASS, msg)


def check_hyperparameters(cfg, num_params: int, train_tokens: int) -> Check:
    """Learning rate and batch size in the ranges that train models of this size (rules of thumb:
    AdamW ~1e-3 for small models falling to ~6e-4 at GPT-2 124M; Muon ~0.02; at least a few
    thousand tokens per step; warmup shorter than the run; not hundreds of epochs)."""
    warn = []
    tps = cfg.tokens_per_step or cfg.batch_size * cfg.block_size
    if cfg.lr > 3e-2 or (num_params > 100e6 and cfg.lr > 3e-3):
        warn.append(f"AdamW lr {cfg.lr:g} is high for {num_params / 1e6:.1f}M parameters")
    if cfg.lr < 1e-5:
        warn.append(f"AdamW lr {cfg.lr:g} is too low to train")
    if cfg.optimizer == "muon" and not 2e-3 <= cfg.muon_lr <= 0.1:
        warn.append(f"Muon lr {cfg.muon_lr:g} is outside [0.002, 0.1]")
    if tps < 2048:
        warn.append(f"{tps} tokens per step: a noisy gradient")
    if cfg.warmup_steps >= cfg.max_steps:
        warn.append(f"warmup ({cfg.warmup_steps} steps) is not shorter than the run ({cfg.max_steps})")
    epochs = cfg.max_steps * tps / max(train_tokens, 1)
    if epochs > 100:
        warn.append(f"{epochs:.0f} epochs over {train_tokens:,} train tokens: it will memorise")
    msg = (f"{num_params / 1e6:.2f}M params, AdamW lr {cfg.lr:g}"
           f"{f', Muon lr {cfg.muon_lr:g}' if cfg.optimizer == 'muon' else ''}, {tps:,} tokens/step, "
           f"{epochs:.2f} epochs")
    return Check("lr and batch size", WARN if warn else PASS, f"{'; '.join(warn)} ({msg})" if warn else msg)


def check_tokenizer_roundtrip(tok, texts: Iterable[str]) -> Check:
    """``decode(encode(text)) == text`` on a sample of the data: a tokenizer that drops or changes
    characters trains the model on text other than the user's."""
    n = total = 0
    for n, text in enumerate(texts, 1):
        total += len(text)
        back = tok.decode(tok.encode_ordinary(text))
        if back != text:
            i = next((k for k, (a, b) in enumerate(zip(text, back, strict=False)) if a != b),
                     min(len(text), len(back)))
            return Check("tokenizer round trip", FAIL, f"text {n} differs at character {i}: "
                                                       f"{text[i:i + 20]!r} came back as {back[i:i + 20]!r}")
    if not n:
        return Check("tokenizer round trip", SKIP, "no text to try")
    return Check("tokenizer round trip", PASS, f"{n} texts, {total:,} characters come back unchanged")


def check_chat_tokens(tok, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Check:
    """Chat data must be rendered with the special tokens: every row with trained targets holds
    ``<|assistant_start|>`` and trains on ``<|assistant_end|>``, and no special-token string was
    encoded as plain text (``"<|user_start|>"`` spelled out in ordinary tokens)."""
    from gptforge.chat.render import CHAT_TOKENS

    specials, name = getattr(tok, "special_tokens", {}) or {}, "chat special tokens"
    if missing := [s for s in CHAT_TOKENS if s not in specials]:
        return Check(name, FAIL, f"the tokenizer has no {', '.join(missing[:2])}, ...: chat needs a gptforge "
                                 "BPE tokenizer")
    a_start, a_end = specials["<|assistant_start|>"], specials["<|assistant_end|>"]
    special_ids = set(specials.values())
    rows = bad = spelled = 0
    for x, y in batches:
        for xr, yr in zip(x.tolist(), y.tolist(), strict=True):
            if all(t == -1 for t in yr):
                continue
            text = tok.decode([t for t in xr if t not in special_ids])
            spells = any(s in text for s in CHAT_TOKENS)
            if -1 not in yr and a_start not in xr and not spells:
                continue  # a window of pretraining text mixed in (sft --pretrain-mix): no chat in it
            rows += 1
            bad += a_start not in xr or a_end not in yr
            spelled += spells
    if not rows:
        return Check(name, FAIL, "no row has a trained target")
    if spelled:
        return Check(name, FAIL, f"{spelled} of {rows} rows spell special tokens as plain text: render "
                                 "conversations with gptforge.chat.render")
    if bad:
        return Check(name, FAIL, f"{bad} of {rows} trained rows lack <|assistant_start|> or a trained "
                                 "<|assistant_end|>")
    return Check(name, PASS, f"{rows} trained rows, each with <|assistant_start|> and a trained "
                             "<|assistant_end|>")


# --- all of it, for a config ------------------------------------------------------------------------------
def _timed(fn: Callable[[], Check]) -> Check:
    t0 = time.perf_counter()
    try:
        c = fn()
    except Exception as e:  # a crash in a check is itself a finding; the other checks still run
        c = Check(getattr(fn, "__name__", "check"), FAIL, f"raised {type(e).__name__}: {str(e)[:160]}")
    c.seconds = time.perf_counter() - t0
    return c


def _sample_texts(cfg, tok, data, max_chars: int = 200_000) -> list[str]:
    """Text to round-trip: the corpus the shards came from when it can still be read, else decoded
    training windows; for SFT the messages of the first conversations."""
    texts: list[str] = []
    if cfg.task == "sft":
        from gptforge.chat.sources import conversations

        for conv in conversations(cfg.data, "train", cfg.seed):
            for m in conv:
                c = m["content"]
                texts += [c] if isinstance(c, str) else [p["text"] for p in c]
            if sum(map(len, texts)) > max_chars or len(texts) > 2000:
                break
        return texts
    try:
        corpus = open_corpus(open_shards(cfg.data).meta["corpus"]["spec"])
        for piece in corpus.pieces(chunk_bytes=1 << 16):
            texts.append(piece.text[:20_000])
            if sum(map(len, texts)) > max_chars:
                break
        return texts
    except (UserError, KeyError, OSError):
        x, _ = data.batches.get(0, "cpu")
        return [tok.decode(r) for r in x.tolist()]


def run_doctor(cfg, rows: int = 4, overfit_steps: int = 60, overfit_tokens: int = 64,
               on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check on the data and fresh model of ``cfg`` (a TrainConfig), on the CPU.

    The model checks use ``rows`` rows of the first training batch; overfitting, the slowest, uses
    half of them cropped to ``overfit_tokens`` positions (pretraining; SFT rows are kept whole so that
    their trained targets stay in). ``on_check`` is called with each
    result as it comes (for printing). Returns the checks in order.

    Raises:
        UserError: the config's data or base checkpoint cannot be read.
    """
    from gptforge.explore.setup import accum_steps, fresh_model, train_data
    from gptforge.train.optim import build_optimizers

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data, tok = train_data(cfg)
    accum = accum_steps(cfg)
    model = fresh_model(cfg, tok.vocab_size)
    batch = tuple(t[:rows] for t in data.batches.get(0, "cpu"))
    out: list[Check] = []

    def add(fn):
        out.append(_timed(fn))
        if on_check:
            on_check(out[-1])

    add(lambda: check_initial_loss(model, batch, tok.vocab_size, data.loss_fn,
                                   pretrained=bool(cfg.init_from)))
    add(lambda: check_logits(model, batch))
    small = tuple(t[:max(1, rows // 2), :None if cfg.task == "sft" else overfit_tokens] for t in batch)
    add(lambda: check_overfit_one_batch(model, small, data.loss_fn, steps=overfit_steps))
    add(lambda: check_train_eval_mode(model, batch))
    add(lambda: check_zero_grad(model, lambda m: build_optimizers(m, cfg, "cpu"), batch, data.loss_fn,
                                lambda m, o, b, f: step.optimizer_step(m, o, lambda i: b, 1, f,
                                                                       grad_clip=cfg.grad_clip)))
    add(lambda: check_batches_vary(data.batches, accum))
    add(lambda: check_targets_shifted(data.batches))
    if cfg.task == "sft":
        # packed rows: the inputs of every training row against those of the validation rows
        train_rows = data.batches.rows[:, :-1].ravel()
        val_rows = np.concatenate([x.numpy().ravel() for x, _ in data.val_batches(0, 1, "cpu")])
        add(lambda: check_split_overlap(train_rows, val_rows, None))
    else:
        shards = open_shards(cfg.data)
        add(lambda: check_split_overlap(shards.tokens("train"), shards.tokens("val"), tok.eot_id))
    add(lambda: check_hyperparameters(cfg, sum(p.numel() for p in model.parameters()), data.train_tokens))
    add(lambda: check_tokenizer_roundtrip(tok, _sample_texts(cfg, tok, data)))
    if cfg.task == "sft":
        add(lambda: check_chat_tokens(tok, (data.batches.get(s * accum, "cpu") for s in range(4))))
    else:
        add(lambda: Check("chat special tokens", SKIP, "pretraining: no chat data"))
    return out
