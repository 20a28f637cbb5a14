"""The sampling engine: prefill, then decode one token at a time, streaming tokens as they come.

    >>> for step in generate_stream(model, [prompt_ids], max_new_tokens=100, temperature=0.8):
    ...     print(step[0])        # the new token of row 0 (None once the row has stopped)

How each model keeps its context between steps (``use_cache=True``):

- GPT: a preallocated per-layer KV cache (``model.new_kv_cache``): the prompt is run once
  (prefill), then each step runs one token per row against the cached keys and values.
- LSTM: the recurrent state (h, c) carried from step to step (``model.forward_step``).
- Bigram and MLP: they only see a fixed window of recent tokens; every step runs the model on the
  last ``block_size`` tokens (the sliding window is their whole state).

With ``use_cache=False`` every step runs a full forward pass over the last ``block_size`` tokens
(nanoGPT's ``generate``); greedy output is the same token for token (tested). When a sequence
outgrows ``block_size`` the context is cropped to its last ``block_size`` tokens in both modes; with
the cache that means refilling it from the cropped window, so the two modes stay identical.

Batched prompts may differ in length: every row starts at position 0; while a row is still inside
its prompt, its prompt token is fed instead of a sampled one (and nothing is yielded for it).

Tool use (``tool=ToolUse(...)``): when a row samples ``<|tool_call_start|>``, the engine collects the
row's next tokens until it samples ``<|tool_call_end|>``, decodes them to an expression, runs the tool
(by default ``gptforge.tools.calculator``) and queues ``<|tool_output_start|> result
<|tool_output_end|>`` for that row. Queued tokens are fed one per step instead of the sampled token,
as prompt tokens are, but they *are* yielded and count towards ``max_new_tokens``; then the model
samples again. Each row has its own call and queue.

Sampling (Holtzman et al. 2019 for top-p): logits / temperature, keep the top-k, keep the smallest
set of tokens whose probability mass reaches top_p, then sample; temperature 0 is greedy (argmax).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptforge.config import check, setting
from gptforge.errors import UserError
from gptforge.tools import calculator

TOOL_TOKENS = ("<|tool_call_start|>", "<|tool_call_end|>", "<|tool_output_start|>", "<|tool_output_end|>")


@dataclass
class SamplingParams:
    """Decoding settings (each field's bounds are checked on construction).

    Attributes:
        max_new_tokens: tokens to generate per row (excluding the prompt).
        temperature: >= 0; 0 means greedy.
        top_k: keep the k most likely tokens (None: all; more than the vocabulary: all).
        top_p: nucleus mass in (0, 1] (1: no nucleus filtering).
        seed: seed for the sampler's own torch.Generator (None: nondeterministic).
    """

    max_new_tokens: int = setting(256, "tokens to generate per sample", ge=0, le=1_000_000)
    temperature: float = setting(1.0, "0 = greedy; higher = more random", ge=0, le=1000)
    top_k: int | None = setting(None, "keep the k most likely tokens; none = all", ge=1, le=1 << 24)
    top_p: float = setting(1.0, "nucleus: keep the smallest set of tokens with this much probability",
                           gt=0, le=1)
    seed: int | None = setting(None, "sampler seed; none = a different sample each run", ge=0,
                               le=2**63 - 1)

    def __post_init__(self):
        check(self, "sampling")


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
        ids = [tok.special_tokens[s] for s in TOOL_TOKENS]
        return cls(*ids, decode=tok.decode, encode=tok.encode, run=run)


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


class Slots:
    """The rows being decoded: rows join (``add``: the prompt in one forward pass) and leave
    (``remove``) between decode steps (``step``: one new token per row, all rows together), each at
    its own position, so a new request never waits for a running batch to finish (iteration-level
    scheduling: Yu et al. 2022, Orca; vLLM).

        slots = Slots(model, max_rows=32)
        logits = slots.add(prompt_ids, copies=2)   # (2, V): rows 0 and 1, the same prompt
        logits = slots.step([tok0, tok1])          # (2, V): one new token per live row
        slots.remove(0)                            # row 1 is now row 0

    With ``use_cache`` a GPT keeps one KV cache of ``max_rows`` rows with ragged positions
    (``KVCache.row_pos``): a prompt is prefilled alone into a cache of its own and copied into the
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
        self.cache = None
        self.recurrent = use_cache and hasattr(model, "forward_step")  # the LSTM: its state is its context
        if use_cache and hasattr(model, "new_kv_cache"):
            self.cache = model.new_kv_cache(max_rows, self.block_size)
            self.cache.row_pos = [0] * max_rows
        self.tokens: list[list[int]] = []  # every row's tokens so far
        self.states: list = []  # the LSTM's (h, c) per row

    def __len__(self) -> int:
        return len(self.tokens)

    def length(self, i: int) -> int:
        """Tokens row ``i`` has been fed (prompt included)."""
        return len(self.tokens[i])

    def _tensor(self, tokens: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # (1, T)

    def _prefill(self, tokens: Sequence[int]):
        """A KV cache of one row that has read ``tokens``, and its next-token logits (1, V)."""
        one = self.model.new_kv_cache(1, len(tokens))
        logits, _ = self.model(self._tensor(tokens), kv_cache=one)
        return one, logits[:, -1]

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
        if self.cache is not None:
            one, logits = self._prefill(prompt)
            for r in range(first, first + copies):
                self.cache.copy_row(r, 0, one)
        for _ in range(copies):
            self.tokens.append(list(prompt))
            self.states.append(None)
        if self.cache is None:
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
            if self.cache.row_pos[i] >= self.block_size:  # no room for the new token: slide the context
                self.cache.copy_row(i, 0, self._prefill(seq[-self.block_size:-1])[0])
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (n, 1)
        logits, _ = self.model(idx, kv_cache=self.cache)
        return logits[:, -1]

    def remove(self, i: int) -> None:
        """Row ``i`` leaves; the last row takes its number."""
        last = len(self.tokens) - 1
        if i != last and self.cache is not None:
            self.cache.copy_row(i, last)
        for rows in (self.tokens, self.states):
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
                slots.remove(j)
                live[j] = live[-1]
                live.pop()
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
    device = next(model.parameters()).device
    rows = make_rows(prompts, max_new_tokens, device=device, **kwargs)
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
    from pathlib import Path

    from gptforge.checkpoint import load_checkpoint
    from gptforge.tokenizer import load_tokenizer

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
