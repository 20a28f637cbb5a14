"""Batched log-likelihood of continuations: the one primitive every multiple-choice and cloze task uses.

A request is a pair of token lists (context, continuation). Its score is

    logprob = sum_t ln p(continuation[t] | context, continuation[:t])      (nats, <= 0)

plus the number of continuation tokens scored and whether greedy decoding (argmax at each position)
reproduces every continuation token. This is lm-evaluation-harness's ``loglikelihood`` request
(``HFLM._loglikelihood_tokens``) and what nanochat's ``core_eval.forward_model`` computes per option,
written for gptforge models: ``model(idx (B, T)) -> (logits (B, T, V), loss)``.

Batching: requests are sorted by length, longest first, and packed into batches of at most
``max_tokens`` padded tokens, so little compute is spent on padding. Rows are padded on the right:
with causal attention the padding sits after every scored position and cannot change it, so a
batched score equals the score of the request alone (up to float rounding; tested).

Long requests: when context + continuation exceed ``block_size + 1`` tokens, the context is cropped
from the left to fit (lm-eval crops the same way: the last ``max_length + 1`` tokens, less the
final one, are the input). A continuation longer than ``block_size`` keeps only its last
``block_size`` tokens scored (``n_tokens`` says how many); lm-eval refuses those.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptforge.models import eval_mode


@dataclass(frozen=True)
class Request:
    """One scoring request. context: token ids (at least one: the first continuation token needs
    something to be predicted from; pass a BOS/EOT token for an empty context). continuation: the
    ids to score (at least one)."""

    context: Sequence[int]
    continuation: Sequence[int]


@dataclass(frozen=True)
class Score:
    """logprob: sum of ln p over the scored continuation tokens, nats (float64 accumulation).
    n_tokens: continuation tokens scored (all of them unless longer than block_size).
    greedy: argmax at every scored position equals the continuation token."""

    logprob: float
    n_tokens: int
    greedy: bool

    @property
    def mean_loss(self) -> float:
        """Mean negative log-likelihood per scored token, nats/token (CORE's multiple-choice score)."""
        return -self.logprob / self.n_tokens


@torch.inference_mode()
def score_requests(model: torch.nn.Module, requests: Sequence[Request], max_tokens: int = 4096,
                   max_batch: int = 64, progress: Callable[[int, int], None] | None = None) -> list[Score]:
    """Score every request with ``model``; returns one `Score` per request, in the order given.

    model: a gptforge model (``model.config.block_size``; ``forward(idx) -> (logits, loss)``, logits
        float (B, T, V)). Run in eval mode for the call (its training flag is restored after). Wrap the
        call in ``torch.autocast`` to run in bf16; log-softmax is always taken in float32.
    max_tokens: padded tokens per forward pass (B * T); a single longer request still runs alone.
        Memory is dominated by the logits, max_tokens * vocab_size * 4 bytes.
    max_batch: rows per forward pass at most.
    progress: called as ``progress(done, total)`` (requests) after each batch.

    Raises:
        ValueError: a request with an empty context or continuation.
    """
    T = model.config.block_size
    # crop from the left: the window is the last T + 1 tokens; inputs drop its final token
    windows, n_scored = [], []
    for r in requests:
        if len(r.context) == 0 or len(r.continuation) == 0:
            raise ValueError("a request needs at least one context and one continuation token")
        seq = (list(r.context) + list(r.continuation))[-(T + 1):]
        windows.append(seq)
        n_scored.append(min(len(r.continuation), len(seq) - 1))
    order = sorted(range(len(requests)), key=lambda i: -len(windows[i]))
    selects = "select" in inspect.signature(model.forward).parameters  # GPT can skip unscored logits
    device = next(model.parameters()).device
    logprob = torch.zeros(len(requests), dtype=torch.float64)
    greedy = torch.zeros(len(requests), dtype=torch.bool)
    done = 0
    with eval_mode(model):
        while done < len(order):
            longest = len(windows[order[done]]) - 1
            B = max(1, min(max_batch, max_tokens // longest, len(order) - done))
            batch = order[done:done + B]
            x = torch.zeros(B, longest, dtype=torch.long)  # right padding with id 0: never scored
            rows, cols, targets = [], [], []
            for b, i in enumerate(batch):
                seq, n = windows[i], n_scored[i]
                L = len(seq) - 1
                x[b, :L] = torch.tensor(seq[:-1])
                # logits at input position p predict token p + 1: the last n inputs predict the last n tokens
                rows += [b] * n
                cols += range(L - n, L)
                targets += seq[L + 1 - n:]
            select = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
            if selects:  # the lm_head only where a token is scored
                picked, _ = model(x.to(device), select=select)  # (N, V)
            else:
                logits, _ = model(x.to(device))  # (B, longest, V)
                picked = logits[select]  # (N, V)
            logp = F.log_softmax(picked.float(), dim=-1)
            tgt = torch.tensor(targets, device=device)
            tok_logp = logp.gather(1, tgt[:, None])[:, 0].double().cpu()  # (N,) nats per token
            hit = (logp.argmax(dim=-1) == tgt).cpu()  # (N,) greedy reproduces the token
            owner = torch.tensor([batch[b] for b in rows])  # request index of each scored token
            logprob.index_add_(0, owner, tok_logp)
            # a request is greedy iff none of its tokens misses
            missed = torch.zeros(len(requests), dtype=torch.long).index_add_(0, owner, (~hit).long())
            greedy[batch] = missed[batch] == 0
            done += B
            if progress is not None:
                progress(done, len(order))
    return [Score(float(lp), n, bool(g)) for lp, n, g in zip(logprob.tolist(), n_scored, greedy.tolist(),
                                                            strict=True)]
