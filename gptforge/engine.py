"""The sampling engine: prefill, then decode one token at a time, streaming tokens as they come.

    >>> for step in generate_stream(model, [prompt_ids], max_new_tokens=100, temperature=0.8):
    ...     print(step[0])        # the new token of row 0 (None once the row has stopped)

One decode loop serves everything: every reply is a ``Row`` (its sampler, tool calls and stop
tokens; ``Row.choose`` picks its next token) and the rows being decoded live in ``Slots`` (each
prompt prefilled in one forward pass, then one token per row per step, all rows as one batch).
``generate``/``generate_stream``/``generate_rows`` run a fixed batch of rows to the end
(``decode``); the server's batcher (gptforge.serve.batcher) lets rows join and leave between steps.

For RL (k samples per prompt with tools on): ``generate_rows(model, [p] * k, n, temperature=1,
seed=s, tool=ToolUse.from_tokenizer(tok))`` returns one Row per sample with ``tokens`` (the reply,
prompt excluded), ``sampled`` (per token: True if the model sampled it, False if it is a tool answer
the engine forced in, which a policy-gradient loss leaves out) and ``stopped``.

How each model keeps its context between steps (``use_cache=True``):

- GPT: a KV cache with one row per reply, each at its own position (``model.new_kv_cache``).
- LSTM: the recurrent state (h, c) carried from step to step (``model.forward_step``).
- Bigram and MLP: they only see a fixed window of recent tokens; every step runs the model on the
  last ``block_size`` tokens (the sliding window is their whole state).

With ``use_cache=False`` every step runs a full forward pass over the last ``block_size`` tokens
(nanoGPT's ``generate``); greedy output is the same token for token (tested). When a sequence
outgrows ``block_size`` the context is cropped to its last ``block_size`` tokens in both modes; with
the cache that means refilling the row from the cropped window, so the two modes stay identical.

Tool use (``tool=ToolUse(...)``): when a row samples ``<|tool_call_start|>``, the row collects its
next tokens until it samples ``<|tool_call_end|>``, decodes them to an expression, runs the tool
(by default ``gptforge.tools.calculator``) and queues ``<|tool_output_start|> result
<|tool_output_end|>``. Queued tokens are fed one per step instead of a sampled token; they are
yielded and count towards ``max_new_tokens``; then the model samples again.

Sampling (Holtzman et al. 2019 for top-p): logits / temperature, keep the top-k, keep the smallest
set of tokens whose probability mass reaches top_p, then sample; temperature 0 is greedy (argmax).
Row i of a batch samples with its own generator seeded ``seed + i``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from gptforge.checkpoint import load_checkpoint
from gptforge.errors import UserError
from gptforge.models import GPT
from gptforge.sampling import SamplingParams  # torch-free there, for the CLI's flags
from gptforge.tokenizer import load_tokenizer
from gptforge.tools import calculator

TOOL_TOKENS = ("<|tool_call_start|>", "<|tool_call_end|>", "<|tool_output_start|>", "<|tool_output_end|>")


@dataclass(frozen=True)
class ToolUse:
    """How the engine runs a tool the model calls (see the module docstring).

    Attributes:
        call_start, call_end: ids of the tokens the model writes around a call.
        output_start, output_end: ids of the tokens the engine writes around the tool's answer.
        decode: the call's token ids (between call_start and call_end, both excluded) to its text.
        encode: the tool's answer to token ids. It must accept every string ``run`` can return: a
            byte-level BPE does; a char tokenizer needs the digits and the letters of the error texts.
        run: the tool, text to text. It must return (not raise, not hang) on any text: the text is
            whatever the model wrote. ``calculator`` does.
    """

    call_start: int
    call_end: int
    output_start: int
    output_end: int
    decode: Callable[[list[int]], str]
    encode: Callable[[str], list[int]]
    run: Callable[[str], str] = calculator

    @classmethod
    def from_tokenizer(cls, tok, run: Callable[[str], str] = calculator) -> ToolUse:
        """The four ids from ``tok.special_tokens`` (``TOOL_TOKENS``), with ``tok.decode`` and
        ``tok.encode`` (answer text is ordinary text: a special-token string in it is refused).

        Raises:
            UserError: the tokenizer lacks one of the tool tokens.
        """
        missing = [s for s in TOOL_TOKENS if s not in tok.special_tokens]
        if missing:
            raise UserError(f"this tokenizer has no {', '.join(missing)} special token(s); tool use needs "
                            f"all of {', '.join(TOOL_TOKENS)}")
        return cls(*(tok.special_tokens[s] for s in TOOL_TOKENS), tok.decode, tok.encode, run)


def is_greedy(temperature: float) -> bool:
    """Temperature 0, or one so small that float32 division by it overflows or divides by zero (it
    would turn the top logit into nan): both pick the argmax."""
    return temperature < torch.finfo(torch.float32).tiny


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row. Any temperature >= 0, top_k >= 1 and top_p in (0, 1] gives
    finite probabilities: a temperature below float32's smallest normal number is greedy, and the
    most likely token always survives top-k and top-p (so a top_p that underflows is top-1).

    Args:
        logits: (B, V) float, unnormalised log-probabilities.
    Returns:
        (B,) int64 token ids.
    """
    if is_greedy(temperature):
        return logits.argmax(dim=-1)
    # shift the max to 0 first: a tiny temperature then sends the rest to -inf instead of inf - inf = nan
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        drop[:, 0] = False  # (a top_p below float32's range compares as 0 and would drop every token)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Row:
    """One reply being decoded: its sampler, its tool calls and its stop tokens (module docstring).
    The engine's generate and the server's batcher decode every row through ``Row.choose``.

    Attributes:
        tokens: the reply so far (prompt excluded), sampled and forced tokens alike.
        sampled: one bool per token: True when the model sampled it, False when it was forced (a tool's
            answer, ``<|tool_output_start|> ... <|tool_output_end|>``), e.g. to leave forced tokens
            out of a policy-gradient loss.
        stopped: the row sampled one of its stop tokens (which is not in ``tokens``).
        done: stopped, or ``max_new_tokens`` tokens produced.
    """

    def __init__(self, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float = 1.0, seed: int | None = None, stop_tokens: Sequence[int] = (),
                 tool: ToolUse | None = None, banned: Sequence[int] = (), device: str | torch.device = "cpu"):
        self.max_new, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.stops, self.tool, self.banned = frozenset(stop_tokens), tool, list(banned)
        self.tokens: list[int] = []
        self.sampled: list[bool] = []
        self.stopped = False
        self.call: list[int] | None = None  # the tokens of an open tool call
        self.queue: deque[int] = deque()  # the tool's answer, still to force

    @property
    def done(self) -> bool:
        return self.stopped or len(self.tokens) >= self.max_new

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature)

    def choose(self, logits: torch.Tensor, greedy: int | None = None) -> int | None:
        """Take the row's next token and return it: a queued tool-answer token, else ``greedy`` (the
        argmax, for a greedy row) or a sample from ``logits`` (V,) float. Returns None, and the row is
        done, when the model sampled a stop token. A call's end runs the tool and queues its answer."""
        if self.queue:
            tok = self.queue.popleft()
            self.tokens.append(tok)
            self.sampled.append(False)
            return tok
        if greedy is None:
            greedy = int(sample_next(logits[None], self.temperature, self.top_k, self.top_p, self.gen)[0])
        if greedy in self.stops:
            self.stopped = True
            return None
        self.tokens.append(greedy)
        self.sampled.append(True)
        if self.tool is not None and not self.done:
            self._observe(greedy)
        return greedy

    def _observe(self, tok: int) -> None:
        t = self.tool
        if self.call is None:
            if tok == t.call_start:
                self.call = []
        elif tok == t.call_end:
            result = t.run(t.decode(self.call))
            self.call = None
            self.queue.extend([t.output_start, *t.encode(result), t.output_end])
        else:
            self.call.append(tok)


def prepare(rows: Sequence[Row], logits: torch.Tensor) -> tuple[torch.Tensor, list[int | None]]:
    """(logits (n, V) with each row's banned tokens at -inf, row i's in logits[i]; the argmax of each
    greedy row, from one call for all of them, and None for the others)."""
    if any(r.banned for r in rows):
        logits = logits.clone()
        for i, r in enumerate(rows):
            logits[i, r.banned] = float("-inf")
    if not any(r.greedy for r in rows):
        return logits, [None] * len(rows)
    top = logits.argmax(dim=-1).tolist()
    return logits, [t if r.greedy else None for t, r in zip(top, rows, strict=True)]


class Where(NamedTuple):
    """Where one forward pass's new tokens go in a KVCache (``KVCache.where``)."""

    positions: torch.Tensor  # int64 (T,), shared by every row, or (B, T), each row's own
    index: tuple[torch.Tensor, torch.Tensor] | None  # ragged rows' write index: (B, 1) rows, (B, T) positions
    mask: torch.Tensor | None  # bool (T, L) or (B, 1, T, L): which keys each query sees; None: all
    end: int  # L, keys the furthest row attends to (its last position + 1)


class KVCache:
    """Preallocated keys and values of a GPT for incremental decoding, ``model(idx, kv_cache=cache,
    pos=pos)`` (Pope et al. 2022, "Efficiently Scaling Transformer Inference").

    k, v: (n_layer, B, n_kv_head, max_len, head_dim), keys stored after RoPE and QK-norm. The cache
    keeps no positions: each forward pass says where its tokens go (``pos``: one int for every row,
    or B ints, one per row, for ragged rows) and the caller counts (``Slots`` does). A pass over
    idx (b, T), b <= B, uses rows 0..b-1: row r's tokens sit at pos[r]..pos[r]+T-1 and attend to
    that row's keys up to their own position only (later slots may hold stale keys of an earlier row).
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int | None = None):
        cfg, p = model.config, model.lm_head.weight
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim)
        self.k = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.v = torch.zeros(shape, device=p.device, dtype=p.dtype)

    def where(self, pos: int | Sequence[int], B: int, T: int, device) -> Where:
        """Where a forward pass over B rows of T new tokens starting at ``pos`` writes (computed once
        per pass; every layer's ``update`` uses it).

        Raises:
            ValueError: a row would pass max_len.
        """
        start = [pos] * B if isinstance(pos, int) else list(pos)[:B]
        L = max(start) + T
        if L > self.k.size(3):
            raise ValueError(f"KV cache holds {self.k.size(3)} positions; cannot write up to position {L}")
        if min(start) == L - T:  # one start for every row (a single row, say): plain slices
            # query i sits at position L-T+i and may see keys 0..L-T+i; one new token sees everything
            mask = None if T == 1 else torch.ones(T, L, dtype=torch.bool, device=device).tril(L - T)
            return Where(torch.arange(L - T, L, device=device), None, mask, L)
        pos = torch.tensor(start, device=device)[:, None] + torch.arange(T, device=device)  # (B, T)
        # query t of row r sits at pos[r, t] and sees that row's keys 0..pos[r, t] (a mask even for T = 1)
        mask = (torch.arange(L, device=device) <= pos[:, :, None]).unsqueeze(1)  # (B, 1, T, L)
        return Where(pos, (torch.arange(B, device=device)[:, None], pos), mask, L)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, where: Where):
        """Write k, v (B, n_kv_head, T, hs) of ``layer`` at ``where``; return that layer's keys and
        values up to ``where.end``, each (B, n_kv_head, L, hs), and the attention mask to use."""
        B, T, L = k.size(0), k.size(2), where.end
        if where.index is None:
            self.k[layer, :B, :, L - T:L] = k
            self.v[layer, :B, :, L - T:L] = v
        else:  # (B, T, nkv, hs) into the rows' (nkv, hs) slots at their positions
            rows, pos = where.index  # index_put does not cast as slice assignment does (autocast's bf16 k, v)
            self.k[layer][rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)
            self.v[layer][rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[layer, :B, :, :L], self.v[layer, :B, :, :L], where.mask

    def copy_row(self, dst: int, src: int, n: int, other: KVCache | None = None) -> None:
        """Positions 0..n-1 of row ``dst`` become those of row ``src`` of ``other`` (default: this cache)."""
        other = other or self
        self.k[:, dst, :, :n] = other.k[:, src, :, :n]
        self.v[:, dst, :, :n] = other.v[:, src, :, :n]


class Slots:
    """The rows being decoded: rows join (``add``: the prompt in one forward pass) and leave
    (``remove``) between decode steps (``step``: one new token per row, all rows together), each at
    its own position, so a new request never waits for a running batch to finish (iteration-level
    scheduling: Yu et al. 2022, Orca; vLLM).

        slots = Slots(model, max_rows=32)
        logits = slots.add(prompt_ids, copies=2)   # (2, V): rows 0 and 1, the same prompt
        logits = slots.step([tok0, tok1])          # (2, V): one new token per live row
        slots.remove(0)                            # row 1 is now row 0

    With ``use_cache`` a GPT keeps one KV cache of ``max_rows`` rows, each at its own position
    (``pos``): a prompt is prefilled alone into a cache of its own and copied into the
    next free rows; a step runs every row as one batch. A row that outgrows block_size is refilled
    from its last block_size - 1 tokens first (its context slides, as without the cache). The LSTM
    carries each row's recurrent state (``forward_step``); other models, and every model without
    ``use_cache``, run each row's last block_size tokens through the model at every step, row by row.
    Rows are numbered 0..n-1 in the order they joined; ``remove(i)`` moves the last row into i.
    """

    def __init__(self, model: torch.nn.Module, max_rows: int, use_cache: bool = True):
        self.model, self.max_rows = model, max_rows
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.cache = KVCache(model, max_rows) if use_cache and isinstance(model, GPT) else None
        self.recurrent = use_cache and hasattr(model, "forward_step")  # the LSTM: its state is its context
        self.tokens: list[list[int]] = []  # every row's tokens so far
        self.pos: list[int] = []  # every row's tokens in the KV cache (the next token's position)
        self.states: list = []  # the LSTM's (h, c) per row

    def __len__(self) -> int:
        return len(self.tokens)

    def length(self, i: int) -> int:
        """Tokens row ``i`` has been fed (prompt included)."""
        return len(self.tokens[i])

    def _tensor(self, tokens: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # (1, T)

    def _prefill(self, i: int, tokens: Sequence[int]) -> torch.Tensor:
        """Row ``i`` of the KV cache reads ``tokens`` from position 0 (in a cache of its own, so the
        other rows do not run); returns its next-token logits (1, V)."""
        one = KVCache(self.model, 1, len(tokens))
        logits, _ = self.model(self._tensor(tokens), kv_cache=one)
        self.cache.copy_row(i, 0, len(tokens), one)
        self.pos[i] = len(tokens)
        return logits[:, -1]

    def _row_logits(self, i: int) -> torch.Tensor:
        """Next-token logits (1, V) of row ``i`` without a KV cache."""
        seq = self.tokens[i]
        if not self.recurrent:
            return self.model(self._tensor(seq[-self.block_size:]))[0][:, -1]
        new = seq if self.states[i] is None else seq[-1:]
        logits, self.states[i] = self.model.forward_step(self._tensor(new), self.states[i])
        return logits[:, -1]

    @torch.inference_mode()
    def add(self, prompt: Sequence[int], copies: int = 1) -> torch.Tensor:
        """Append ``copies`` rows that have read ``prompt``; returns their next-token logits, (copies, V).

        Raises:
            ValueError: no room for ``copies`` more rows, or a prompt empty or longer than block_size
                (any length for the LSTM).
        """
        if len(self.tokens) + copies > self.max_rows:
            raise ValueError(f"{len(self.tokens)} rows live; {copies} more exceed max_rows {self.max_rows}")
        if not prompt or (len(prompt) > self.block_size and not self.recurrent):
            raise ValueError(f"a prompt of {len(prompt)} tokens; expected 1..{self.block_size}")
        first = len(self.tokens)
        self.tokens += [list(prompt) for _ in range(copies)]
        self.pos += [0] * copies
        self.states += [None] * copies
        if self.cache is not None:
            logits = self._prefill(first, prompt)
            for r in range(first + 1, first + copies):
                self.cache.copy_row(r, first, len(prompt))
                self.pos[r] = len(prompt)
        else:
            logits = self._row_logits(first)
            self.states[first + 1:] = [self.states[first]] * (copies - 1)  # (never changed in place)
        return logits.expand(copies, -1)

    @torch.inference_mode()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed each live row its next token (``tokens[i]`` to row i); returns next-token logits (n, V)."""
        if len(tokens) != len(self.tokens):
            raise ValueError(f"{len(tokens)} tokens for {len(self.tokens)} rows")
        for seq, tok in zip(self.tokens, tokens, strict=True):
            seq.append(tok)
        if self.cache is None:
            return torch.cat([self._row_logits(i) for i in range(len(self.tokens))])
        for i, seq in enumerate(self.tokens):
            if self.pos[i] >= self.block_size:  # no room for the new token: slide the context
                self._prefill(i, seq[-self.block_size:-1])
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (n, 1)
        logits, _ = self.model(idx, kv_cache=self.cache, pos=self.pos)
        self.pos = [p + 1 for p in self.pos]
        return logits[:, -1]

    def remove(self, i: int, *also: list) -> None:
        """Row ``i`` leaves; the last row takes its number, also in each list of ``also`` (the
        caller's per-row lists, one entry per slot row)."""
        last = len(self.tokens) - 1
        if i != last and self.cache is not None:
            self.cache.copy_row(i, last, self.pos[last])
        for rows in (self.tokens, self.pos, self.states, *also):
            rows[i] = rows[last]
            rows.pop()


@torch.inference_mode()
def decode(model: torch.nn.Module, prompts: Sequence[Sequence[int]], rows: Sequence[Row],
           use_cache: bool = True) -> Iterator[list[int | None]]:
    """Decode ``rows[i]`` from ``prompts[i]`` (each prefilled in one forward pass; a prompt longer than
    block_size keeps its last block_size tokens, except for the LSTM), all rows one step at a time.
    Yields, per step, each row's new token (``Row.choose``), or None for a row that stopped at this
    step or earlier; ends when every row is done."""
    slots = Slots(model, len(rows), use_cache)
    live = [i for i, r in enumerate(rows) if not r.done]  # live[j]: the row in slot j
    if not live:
        return
    crop = (lambda p: p) if slots.recurrent else (lambda p: list(p)[-slots.block_size:])
    logits = torch.cat([slots.add(crop(prompts[i])) for i in live])  # (n, V)
    while live:
        picked = [rows[i] for i in live]
        logits, greedy = prepare(picked, logits)
        out: list[int | None] = [None] * len(rows)
        for j, (r, g) in enumerate(zip(picked, greedy, strict=True)):
            out[live[j]] = r.choose(logits[j], g)
        yield out
        for j in range(len(live) - 1, -1, -1):
            if rows[live[j]].done:
                slots.remove(j, live)
        if live:
            logits = slots.step([rows[i].tokens[-1] for i in live])


def make_rows(prompts: Sequence[Sequence[int]], max_new_tokens: int = 256, *, temperature: float = 1.0,
              top_k: int | None = None, top_p: float = 1.0, seed: int | None = None,
              stop_tokens: Sequence[int] = (), tool: ToolUse | None = None, banned: Sequence[int] = (),
              device: str | torch.device = "cpu") -> list[Row]:
    """One Row per prompt with these settings; row i samples with its own generator seeded
    ``seed + i`` (the server's choices do the same).

    Raises:
        UserError: empty prompt or sampling settings out of range.
    """
    SamplingParams(max_new_tokens, temperature, top_k, top_p, seed)  # checks the ranges
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    return [Row(max_new_tokens, temperature, top_k, top_p, None if seed is None else (seed + i) % 2**63,
                stop_tokens, tool, banned, device) for i in range(len(prompts))]


def generate_stream(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
                    *, use_cache: bool = True, **kwargs) -> Iterator[list[int | None]]:
    """Generate from a batch of prompts, yielding after every decoding step.

    Args:
        model: any gptforge model (``forward(idx) -> (logits, loss)``), in eval mode.
        prompts: B lists of token ids, each non-empty; lengths may differ.
        kwargs: ``make_rows``'s: temperature, top_k, top_p, seed; stop_tokens: a row that samples one
            of these stops (the stop token is not yielded); tool: run the tool calls the model makes
            (module docstring); None: tool tokens are ordinary tokens. Forced answer tokens are
            yielded, count towards ``max_new_tokens`` and are never taken as stop tokens; calls are
            recognised in sampled tokens only, not in the prompt. banned: ids never sampled (their
            logits are set to -inf), e.g. ``<|tool_call_start|>`` to make a chat model answer directly.
    Yields:
        a list of B entries per step: the new token id of each row (sampled, or forced by a tool
        answer), or None for a row that has stopped. Ends when every row has produced
        ``max_new_tokens`` tokens or a stop token; a call or answer still open then is cut off.
    Raises:
        UserError: empty prompt or sampling settings out of range.
    """
    rows = make_rows(prompts, max_new_tokens, device=next(model.parameters()).device, **kwargs)
    yield from decode(model, prompts, rows, use_cache)


def generate_rows(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
                  *, use_cache: bool = True, **kwargs) -> list[Row]:
    """Like ``generate_stream``, but returns each prompt's finished ``Row``: ``tokens`` (prompt
    excluded), ``sampled`` (which tokens the model sampled, which a tool forced) and ``stopped``.
    For k samples per prompt, repeat the prompt k times (row i is seeded ``seed + i``)."""
    rows = make_rows(prompts, max_new_tokens, device=next(model.parameters()).device, **kwargs)
    for _ in decode(model, prompts, rows, use_cache):
        pass
    return rows


def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
             **kwargs) -> list[list[int]]:
    """Like ``generate_rows`` but returns only the new tokens of each row (prompt excluded)."""
    return [r.tokens for r in generate_rows(model, prompts, max_new_tokens, **kwargs)]


def load_for_inference(ckpt: str, which: str = "best", device: str = "cpu", verify: bool = True):
    """(model in eval mode, tokenizer, RunState) from a run or checkpoint directory; ``best``
    falls back to ``latest`` when the run has not evaluated yet. ``verify``: check the weights'
    sha256.

    Raises:
        UserError: no usable checkpoint, a device that does not exist here, or a tokenizer that does
            not match the model.
    """
    device = check_device(device)
    try:
        model, state = load_checkpoint(ckpt, which, device, verify)
    except UserError as e:
        if which != "best" or "no best checkpoint" not in str(e):
            raise
        model, state = load_checkpoint(ckpt, "latest", device, verify)
    tok = load_tokenizer(Path(state.path) / "tokenizer.json")
    if tok.vocab_size != model.config.vocab_size:
        raise UserError(f"{state.path}: tokenizer has {tok.vocab_size} ids but the model "
                        f"{model.config.vocab_size}; the checkpoint is inconsistent")
    return model, tok, state


def check_device(device: str) -> str:
    """``device`` if this machine has it (cpu, cuda, cuda:N, mps).

    Raises:
        UserError: an unknown device name, or one this machine lacks.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: this machine has no Apple GPU (MPS)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: not supported (cpu, cuda, cuda:N, mps)")
    return device
