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

from gptforge.errors import UserError
from gptforge.sampling import SamplingParams  # torch-free there, for the CLI's flags
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
        ids = [tok.special_tokens[s] for s in TOOL_TOKENS]
        return cls(*ids, decode=tok.decode, encode=tok.encode, run=run)


class ToolCalls:
    """Per-row tool-call state: the tokens of an open call, and the answer tokens still to force."""

    def __init__(self, tool: ToolUse, batch_size: int):
        self.tool = tool
        self.open: list[list[int] | None] = [None] * batch_size  # a call's tokens so far; None: no call
        self.queue: list[deque[int]] = [deque() for _ in range(batch_size)]

    def pending(self) -> bool:
        return any(self.queue)

    def pop(self, row: int) -> int | None:
        """The next token to force into ``row``, or None when nothing is queued."""
        return self.queue[row].popleft() if self.queue[row] else None

    def observe(self, row: int, tok: int) -> None:
        """Track a token the model sampled for ``row``; on a call's end, run the tool and queue its answer."""
        t = self.tool
        call = self.open[row]
        if call is None:
            if tok == t.call_start:
                self.open[row] = []
        elif tok == t.call_end:
            self.open[row] = None
            result = t.run(t.decode(call))
            self.queue[row].extend([t.output_start, *t.encode(result), t.output_end])
        else:
            call.append(tok)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row.

    Args:
        logits: (B, V) float, unnormalised log-probabilities.
    Returns:
        (B,) int64 token ids.
    """
    if temperature == 0:
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
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class DecodeContext:
    """Feeds tokens to a model and returns next-token logits, keeping whatever state it can."""

    def __init__(self, model: torch.nn.Module, batch_size: int, use_cache: bool):
        self.model = model
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.mode = "window"
        if use_cache and hasattr(model, "new_kv_cache"):
            self.mode = "kv"
        elif use_cache and hasattr(model, "forward_step"):
            self.mode = "state"
        self.batch_size = batch_size
        self.state = None
        self.cached = 0  # tokens of the sequence the state covers

    def _reset(self):
        if self.mode == "kv":
            dtype = next(self.model.parameters()).dtype
            self.state = self.model.new_kv_cache(self.batch_size, self.block_size, self.device, dtype)
        else:
            self.state = None
        self.cached = 0

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, T_total) all tokens so far. Returns (B, V) logits for the next position."""
        T = seq.size(1)
        if self.mode == "window":
            logits, _ = self.model(seq[:, -self.block_size:])
            return logits[:, -1, :]
        if self.mode == "state":  # LSTM: unbounded context, state carries it
            if self.cached == 0:
                self.state = None
            logits, self.state = self.model.forward_step(seq[:, self.cached:], self.state)
            self.cached = T
            return logits[:, -1, :]
        # KV cache: refill from the cropped window when the sequence outgrows the cache
        if self.cached == 0 or T > self.block_size:
            self._reset()
            new = seq[:, -self.block_size:]
        else:
            new = seq[:, self.cached:]
        logits, _ = self.model(new, kv_cache=self.state)
        self.cached = min(T, self.block_size)
        return logits[:, -1, :]



class Slots:
    """Continuous batching's decoding state: rows join (``add``) and leave (``remove``) between decode
    steps, each at its own position, so a new request never waits for a running batch to finish
    (iteration-level scheduling: Yu et al. 2022, Orca; vLLM).

        slots = Slots(model, max_rows=32)
        logits = slots.add(prompt_ids, copies=2)   # (2, V): rows 0 and 1, the same prompt
        logits = slots.step([tok0, tok1])          # (2, V): one new token per live row
        slots.remove(0)                            # row 1 is now row 0

    A GPT keeps one KV cache of ``max_rows`` rows with ragged positions (``KVCache.row_pos``): a
    prompt is prefilled alone, in one forward pass, into a cache of its own and copied into the next
    free rows; a decode step runs every live row as one batch. Other models (LSTM, MLP, bigram) keep
    a ``DecodeContext`` per row and run their rows one after the other.
    Rows are numbered 0..n-1 in the order they joined; ``remove(i)`` moves the last row into i.
    Every row must stay within the model's block_size (``length``); the caller ends a row there.
    """

    def __init__(self, model: torch.nn.Module, max_rows: int):
        self.model, self.max_rows = model, max_rows
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.cache = None
        if hasattr(model, "new_kv_cache"):
            self.cache = model.new_kv_cache(max_rows, self.block_size)
            self.cache.row_pos = [0] * max_rows
        self.rows: list[tuple[DecodeContext, list[int]] | None] = []  # per row: (context, tokens) or None

    def __len__(self) -> int:
        return len(self.rows)

    def length(self, i: int) -> int:
        """Tokens row ``i`` has been fed (prompt included)."""
        return self.cache.row_pos[i] if self.cache is not None else len(self.rows[i][1])

    @torch.inference_mode()
    def add(self, prompt: Sequence[int], copies: int = 1) -> torch.Tensor:
        """Append ``copies`` rows that have read ``prompt``; returns their next-token logits, (copies, V).

        Raises:
            ValueError: no room for ``copies`` more rows, or a prompt empty or longer than block_size.
        """
        if len(self.rows) + copies > self.max_rows:
            raise ValueError(f"{len(self.rows)} rows live; {copies} more exceed max_rows {self.max_rows}")
        if not 0 < len(prompt) <= self.block_size:
            raise ValueError(f"a prompt of {len(prompt)} tokens; expected 1..{self.block_size}")
        idx = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)  # (1, T)
        if self.cache is not None:
            one = self.model.new_kv_cache(1, len(prompt))
            logits, _ = self.model(idx, kv_cache=one)
            for _ in range(copies):
                self.cache.copy_row(len(self.rows), 0, one)
                self.rows.append(None)
            return logits[:, -1].expand(copies, -1)
        for _ in range(copies):
            ctx = DecodeContext(self.model, 1, use_cache=True)
            logits = ctx.logits(idx)
            self.rows.append((ctx, list(prompt)))
        return logits.expand(copies, -1)

    @torch.inference_mode()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed each live row its next token (``tokens[i]`` to row i); returns next-token logits (n, V)."""
        if len(tokens) != len(self.rows):
            raise ValueError(f"{len(tokens)} tokens for {len(self.rows)} rows")
        if self.cache is not None:
            idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (n, 1)
            logits, _ = self.model(idx, kv_cache=self.cache)
            return logits[:, -1]
        out = []
        for (ctx, seq), tok in zip(self.rows, tokens, strict=True):
            seq.append(tok)
            out.append(ctx.logits(torch.tensor([seq], dtype=torch.long, device=self.device)))
        return torch.cat(out)

    def remove(self, i: int) -> None:
        """Row ``i`` leaves; the last row takes its number."""
        last = len(self.rows) - 1
        if i != last and self.cache is not None:
            self.cache.copy_row(i, last)
        self.rows[i] = self.rows[last]
        self.rows.pop()


@torch.inference_mode()
def generate_stream(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
                    *, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                    seed: int | None = None, stop_tokens: Sequence[int] = (),
                    use_cache: bool = True, tool: ToolUse | None = None,
                    banned: Sequence[int] = ()) -> Iterator[list[int | None]]:
    """Generate from a batch of prompts, yielding after every decoding step.

    Args:
        model: any gptforge model (``forward(idx) -> (logits, loss)``), in eval mode.
        prompts: B lists of token ids, each non-empty; lengths may differ.
        stop_tokens: a row that samples one of these stops (the stop token is not yielded).
        tool: run the tool calls the model makes (module docstring); None: tool tokens are ordinary
            tokens. Forced answer tokens are yielded, count towards ``max_new_tokens`` and are never
            taken as stop tokens; calls are recognised in sampled tokens only, not in the prompt.
        banned: ids never sampled (their logits are set to -inf), e.g. ``<|tool_call_start|>`` to
            make a chat model answer directly.
    Yields:
        a list of B entries per step: the new token id of each row (sampled, or forced by a tool
        answer), or None for a row that is still reading its prompt or has stopped. Ends when every
        row has produced ``max_new_tokens`` tokens or a stop token; a call or answer still open
        then is cut off.
    Raises:
        UserError: empty prompt or sampling settings out of range.
    """
    SamplingParams(max_new_tokens, temperature, top_k, top_p, seed)  # checks the ranges
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    device = next(model.parameters()).device
    B = len(prompts)
    lens = [len(p) for p in prompts]
    start = min(lens)
    total = max(lens) + max_new_tokens  # longest possible sequence; shorter rows stop earlier
    seq = torch.zeros((B, total), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        seq[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    stops = set(stop_tokens)
    produced = [0] * B
    done = [False] * B
    ctx = DecodeContext(model, B, use_cache)
    calls = ToolCalls(tool, B) if tool is not None else None
    longest = max(lens)
    for t in range(start, total):
        if all(done) or max_new_tokens == 0:
            return
        logits = ctx.logits(seq[:, :t])
        if banned:  # tokens the caller never wants sampled (e.g. a tool call, to force a direct answer)
            logits[:, list(banned)] = float("-inf")
        nxt = sample_next(logits, temperature, top_k, top_p, gen)
        if t < longest:  # rows still inside their prompt take the prompt's token
            nxt = torch.where(t < torch.tensor(lens, device=device), seq[:, t], nxt)
        forced = [False] * B
        if calls is not None and calls.pending():  # rows answering a tool call take the answer's token
            nxt, forced = _force(nxt, calls, done)
        seq[:, t] = nxt
        out: list[int | None] = nxt.tolist()
        for i, tok in enumerate(out):
            if t < lens[i] or done[i]:
                out[i] = None
            elif tok in stops and not forced[i]:
                out[i], done[i] = None, True
            else:
                produced[i] += 1
                done[i] = produced[i] >= max_new_tokens
                if calls is not None and not forced[i] and not done[i]:
                    calls.observe(i, tok)
        yield out


def _force(nxt: torch.Tensor, calls: ToolCalls, done: list[bool]) -> tuple[torch.Tensor, list[bool]]:
    """nxt (B,) with each live row's next queued tool-answer token in place of its sample, and which
    rows were forced. (A row with a queue has finished its prompt: calls open only after it.)"""
    tokens = nxt.tolist()
    forced = [False] * len(tokens)
    for i in range(len(tokens)):
        tok = calls.pop(i)  # a stopped row's queue drains unused, so pending() turns False again
        if tok is not None and not done[i]:
            tokens[i], forced[i] = tok, True
    return torch.tensor(tokens, dtype=nxt.dtype, device=nxt.device), forced


def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
             **kwargs) -> list[list[int]]:
    """Like ``generate_stream`` but returns the new tokens of each row (prompt excluded)."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_stream(model, prompts, max_new_tokens, **kwargs):
        for row, tok in zip(out, step, strict=True):
            if tok is not None:
                row.append(tok)
    return out


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
