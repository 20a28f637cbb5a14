"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model") on the training loop of gptforge.train.

For a prompt x with a chosen reply y_c and a rejected reply y_r, the policy pi (initialised from
the SFT checkpoint) and the frozen reference model (that same checkpoint) give per-sequence
log-probabilities, summed over the reply's tokens only (prompt and padding masked):

    h    = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))
    loss = -log sigmoid(beta * h)                       (mean over pairs, nats)

The implicit rewards are r_c = beta * (log pi(y_c|x) - log ref(y_c|x)) and likewise r_r; we log the
reward margin mean(r_c - r_r) and the preference accuracy mean(r_c > r_r) (as TRL's DPOTrainer
does). The reference never changes, so its log-probabilities are computed once, before training,
with the starting checkpoint (TRL's ``precompute_ref_log_probs``): no second model in memory
during training, and a resumed run recomputes exactly the same numbers.

Which tokens are "the reply": the mask of gptforge.chat.render on the last assistant turn (its
text, tool calls and ``<|assistant_end|>``; tool outputs are forced by the engine, so never
scored), everything before it zero.

Data (``read_preferences``): JSONL (optionally .gz) in the messages format, rows with ``prompt``
(a list of messages, or a string: one user turn), ``chosen`` and ``rejected`` (a list of messages
ending with the assistant reply, or a string: the reply); or the Anthropic hh-rlhf text format,
rows with ``chosen`` and ``rejected`` holding whole dialogues ("\\n\\nHuman: ..." / "\\n\\nAssistant:
..."), the prompt being everything before the final assistant turn; or an arena vote database
(gptforge.arena.store: battles with a winner).

    pairs, _ = read_preferences("prefs.jsonl")
    data = dpo_data(cfg, tok, tok_json, pairs, reference_model)     # a TrainData
    train(cfg, data=data)
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptforge.arena.store import VoteStore, is_sqlite
from gptforge.chat.render import ChatTokens, render
from gptforge.chat.sft import targets
from gptforge.errors import UserError
from gptforge.finetune.logprobs import sequence_logprobs
from gptforge.models import eval_mode
from gptforge.tokenizer import Tokenizer
from gptforge.train.config import TrainConfig
from gptforge.train.session import TrainData

HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


# ---------------------------------------------------------------------------------------------
# the loss

def dpo_loss(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO sigmoid loss from per-sequence log-probabilities (each (B,) float, nats).

    Returns ``(loss, stats)``: loss the mean of -log sigmoid(beta * h) over the B pairs; stats
    ``reward_margin`` = mean(beta * h) and ``reward_accuracy`` = fraction with h > 0 (detached).
    Gradients (per pair, before the mean): d loss / d pi_c = -beta * sigmoid(-beta * h),
    d loss / d pi_r = +beta * sigmoid(-beta * h), and the opposite signs for ref_c, ref_r.
    """
    h = (pi_c - ref_c) - (pi_r - ref_r)
    loss = -F.logsigmoid(beta * h).mean()
    margin = (beta * h).detach()
    return loss, {"reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean()}


# ---------------------------------------------------------------------------------------------
# reading pairs

def _messages(v, role: str, where: str) -> list[dict]:
    if isinstance(v, str):
        return [{"role": role, "content": v}]
    if isinstance(v, list) and v and all(isinstance(m, dict) and "role" in m and "content" in m for m in v):
        return v
    raise UserError(f"{where}: expected a string or a list of messages with role and content")


def parse_hh(text: str, where: str) -> list[dict]:
    """An hh-rlhf dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise UserError(f"{where}: not an hh-rlhf dialogue "
                        "(expected '\\n\\nHuman: ' / '\\n\\nAssistant: ' turns)")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def pair_from_row(row: dict, where: str) -> dict:
    """One preference row (messages or hh-rlhf format) as ``{"prompt": [...], "chosen": [assistant
    message], "rejected": [assistant message]}``.

    Raises:
        UserError: a row in neither format, or whose replies are not assistant turns.
    """
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise UserError(f"{where}: a preference row needs 'chosen' and 'rejected'")
    if "prompt" in row:
        prompt = _messages(row["prompt"], "user", f"{where}: prompt")
        chosen = _messages(row["chosen"], "assistant", f"{where}: chosen")
        rejected = _messages(row["rejected"], "assistant", f"{where}: rejected")
        # a chosen/rejected list that repeats the prompt (a whole conversation): keep what follows it
        if chosen[:len(prompt)] == prompt and rejected[:len(prompt)] == prompt and len(chosen) > len(prompt):
            chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    elif isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        # the prompt is the chosen dialogue before its last turn; the rejected reply is the last turn
        # of its own dialogue (as the DPO authors' reference code reads hh-rlhf: ~1% of the rows differ
        # slightly earlier in the dialogue too)
        c, r = parse_hh(row["chosen"], f"{where}: chosen"), parse_hh(row["rejected"], f"{where}: rejected")
        prompt, chosen, rejected = c[:-1], c[-1:], r[-1:]
    else:
        raise UserError(f"{where}: no 'prompt' field and chosen/rejected are not hh-rlhf dialogue strings")
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise UserError(f"{where}: {name} must be one assistant reply")
    if not prompt or prompt[-1]["role"] != "user":
        raise UserError(f"{where}: the prompt must end with a user turn")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def read_preferences(path: str | Path, skip_bad: bool = False) -> tuple[list[dict], list[str]]:
    """``(pairs, skipped)``: the preference pairs of a JSONL file (.gz allowed; messages or hh-rlhf
    format) or an arena vote database, as ``pair_from_row`` returns them, and the errors of the rows
    left out. ``skip_bad``: a row that is valid JSON but not a usable pair (hh-rlhf has a few
    dialogues with a garbled last turn) is left out instead of raised.

    Raises:
        UserError: missing or unreadable file, malformed JSON or (without ``skip_bad``) a bad row
            (file:line), no pairs.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: preference file not found")
    if is_sqlite(p):
        rows = [(f"{p}: battle {i}", r) for i, r in enumerate(VoteStore(p, readonly=True).preference_pairs())]
    else:
        opener = gzip.open if p.suffix == ".gz" else open
        rows = []
        try:
            with opener(p, "rt", encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append((f"{p}:{n}", json.loads(line)))
                        except json.JSONDecodeError as e:
                            raise UserError(f"{p}:{n}: malformed JSON ({e.msg})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{p}: cannot read ({e})") from None
    pairs, skipped = [], []
    for where, r in rows:
        try:
            pairs.append(pair_from_row(r, where))
        except UserError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    if not pairs:
        raise UserError(f"{p}: no preference pairs (an arena database needs battles voted A or B)")
    return pairs, skipped


# ---------------------------------------------------------------------------------------------
# tokens

@dataclass
class EncodeStats:
    pairs: int = 0
    cropped: int = 0  # pairs with a sequence longer than block_size + 1 (prompt cut on the left)
    skipped: int = 0  # pairs whose reply alone does not fit (nothing left to learn from)


def encode(prompt: list[dict], reply: list[dict], tok: Tokenizer, T: int
           ) -> tuple[list[int], list[int], bool]:
    """(ids, mask, cropped) of prompt + reply, mask 1 on the reply's trained tokens only, at most
    T + 1 tokens: a longer sequence loses the start of its prompt (the reply is what is scored)."""
    n_prompt = len(render(prompt, tok)[0])
    ids, mask = render(prompt + reply, tok)
    mask = [0] * n_prompt + mask[n_prompt:]
    return ids[-(T + 1):], mask[-(T + 1):], len(ids) > T + 1  # (the slices keep a short sequence whole)


def encode_pairs(pairs: list[dict], tok: Tokenizer, T: int) -> tuple[np.ndarray, np.ndarray, EncodeStats]:
    """Rows (2, N, T + 1) int32 (chosen, rejected; padded with ``<|endoftext|>``) and masks
    (2, N, T + 1) uint8. A pair whose reply would fill the whole row is skipped and counted.

    Raises:
        UserError: no chat tokens in ``tok``, or no pair fits.
    """
    pad = ChatTokens(tok).eot
    rows, masks, st = [[], []], [[], []], EncodeStats()
    for pair in pairs:
        enc = [encode(pair["prompt"], pair[k], tok, T) for k in ("chosen", "rejected")]
        if any(sum(m) == 0 or m[0] == 1 for _, m, _ in enc):  # the reply alone fills (or overflows) a row
            st.skipped += 1
            continue
        st.pairs += 1
        st.cropped += any(c for _, _, c in enc)
        for k, (ids, mask, _) in enumerate(enc):
            rows[k].append(ids + [pad] * (T + 1 - len(ids)))
            masks[k].append(mask + [0] * (T + 1 - len(mask)))
    if not st.pairs:
        raise UserError(f"no preference pair fits in block_size + 1 = {T + 1} tokens")
    return np.asarray(rows, dtype=np.int32), np.asarray(masks, dtype=np.uint8), st


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, rows: np.ndarray, masks: np.ndarray, batch_size: int = 16,
                       device="cpu") -> np.ndarray:
    """(2, N) float32: the reference model's summed reply log-probabilities of every row."""
    out = np.zeros(rows.shape[:2], dtype=np.float32)
    with eval_mode(model):
        for k in range(2):
            for i in range(0, rows.shape[1], batch_size):
                x, y = targets(rows[k, i:i + batch_size], masks[k, i:i + batch_size], device)
                out[k, i:i + batch_size] = sequence_logprobs(model, x, y).cpu().numpy()
    return out


@dataclass
class DPOBatches:
    """B random pairs per micro-batch, a pure function of (seed, index) as in SFT: ``get(index,
    device) -> (x (2B, T), y (2B, T), ref (2B,))``, chosen rows first, then their rejected rows."""

    rows: np.ndarray  # (2, N, T + 1)
    masks: np.ndarray
    ref: np.ndarray   # (2, N)
    B: int
    seed: int

    def get(self, index: int, device="cpu"):
        pick = np.random.default_rng([self.seed, index]).integers(0, self.rows.shape[1], size=self.B)
        x, y = targets(self.rows[:, pick].reshape(2 * self.B, -1),
                       self.masks[:, pick].reshape(2 * self.B, -1), device)
        return x, y, torch.from_numpy(self.ref[:, pick].reshape(-1)).to(device)


def dpo_step_loss(beta: float):
    """The loop's loss_fn: ``(model, (x, y, ref)) -> (loss, stats)`` (one forward pass over the
    chosen and rejected rows together).

    The policy runs without dropout (eval mode; gradients flow as usual), as TRL's DPOTrainer
    does by default: the reference log-probabilities were computed without it, and with dropout
    the policy would differ from the reference at step 0 by noise, so the margin would start as
    noise rather than 0.
    """

    def loss_fn(model, batch):
        x, y, ref = batch
        with eval_mode(model):
            pi = sequence_logprobs(model, x, y)
        B = len(pi) // 2
        return dpo_loss(pi[:B], pi[B:], ref[:B], ref[B:], beta)

    return loss_fn


def dpo_data(cfg: TrainConfig, tok: Tokenizer, tokenizer_json: str | Path, pairs: list[dict],
             reference: torch.nn.Module, device="cpu") -> tuple[TrainData, EncodeStats, int]:
    """The TrainData of a DPO run: every 10th pair (at most 256) held out for validation (DPO loss,
    reward margin and accuracy), the rest trained on; reference log-probabilities computed now
    with ``reference`` (the starting checkpoint). Returns (data, encode stats, validation pairs).

    Raises:
        UserError: no chat tokens, or too few pairs (at least 2: one to train on, one to validate).
    """
    T = cfg.block_size
    rows, masks, st = encode_pairs(pairs, tok, T)
    N = rows.shape[1]
    if N < 2:
        raise UserError(f"DPO needs at least 2 preference pairs that fit (one is held out); got {N}")
    val = np.arange(0, N, 10)[:256]
    train_idx = np.setdiff1d(np.arange(N), val)
    ref = reference_logprobs(reference.to(device), rows, masks, cfg.batch_size, device)
    tr = (rows[:, train_idx], masks[:, train_idx], ref[:, train_idx])
    va = (rows[:, val], masks[:, val], ref[:, val])

    @torch.no_grad()
    def evaluate(model, d, amp):
        sums = torch.zeros(4, dtype=torch.float64)  # loss, margin, correct, pairs
        mine = np.arange(va[0].shape[1])[d.rank::d.world]
        for i in range(0, len(mine), cfg.batch_size):
            sel = mine[i:i + cfg.batch_size]
            x, y = targets(va[0][:, sel].reshape(2 * len(sel), -1), va[1][:, sel].reshape(2 * len(sel), -1),
                           d.device)
            with amp, eval_mode(model):
                pi = sequence_logprobs(model, x, y)
            r = torch.from_numpy(va[2][:, sel]).to(d.device)
            h = (pi[:len(sel)] - r[0]) - (pi[len(sel):] - r[1])
            sums += torch.stack([-F.logsigmoid(cfg.dpo_beta * h).sum(), (cfg.dpo_beta * h).sum(),
                                 (h > 0).sum(), torch.tensor(float(len(sel)))]).double().cpu()
        d.all_sum(sums)
        loss, margin, correct, n = sums.tolist()
        return {"val_loss": loss / n, "val_reward_margin": margin / n, "val_reward_accuracy": correct / n}

    data = TrainData(batches=DPOBatches(*tr, cfg.batch_size, cfg.seed), loss_fn=dpo_step_loss(cfg.dpo_beta),
                     val_batches=lambda rank, world, device: iter(()), train_tokens=int(tr[0].size),
                     eval_tokens=int(va[0].size), tokenizer_json=Path(tokenizer_json),
                     tokenizer=tok.identity(), token_bytes=tok.token_bytes(), evaluate=evaluate)
    return data, st, len(val)
