"""Reinforcement learning on verifiable rewards: on-policy policy gradient with a group baseline
(GRPO-style: Shao et al. 2024, "DeepSeekMath", section 4.1), on the training loop of gptforge.train.

One micro-batch of B replies = B / k prompts of the tasks' train split, each answered k times:

1. sample: the model being trained samples k replies per prompt with the engine (temperature 1,
   the calculator on: its answers are forced into the reply), seeded by (seed, micro-batch index);
2. reward: each reply is scored by its task's own checker (`gptforge.chat.tasks.reply_correct`):
   r = 1 if right, else 0;
3. advantage: A = r - mean(r of its group) (``rl_std``: divided by the group's std as well, as GRPO
   does), so the k advantages of a prompt sum to zero and a group all right or all wrong teaches
   nothing;
4. loss = - sum_t A * log pi(y_t) / (tokens scored), over the tokens the model sampled only: the
   prompt and the tool's forced output get no gradient; plus ``rl_kl`` times the per-token KL
   estimate exp(q) - q - 1, q = log ref - log pi (Schulman's k3, as GRPO), against the frozen
   starting model, which is always computed and logged.

Each batch is sampled by the weights it updates, and used for one step, so the PPO/GRPO ratio is 1
and its clipping never acts: the gradient is REINFORCE with the group mean as baseline (nanochat's
chat_rl.py does the same). Rollouts and the loss run without dropout (eval mode), so the tokens
are scored under the distribution that sampled them.

Evaluation every ``eval_interval`` steps: ``rl_eval_items`` held-out prompts per task (test split,
half in template-seen phrasings, half in held-out ones), each sampled k times with a fixed seed:
``val_pass1`` = the share of right samples (the unbiased pass@1 estimate from k samples),
``val_passk`` (k = ``rl_samples``) = the share of prompts with at least one right sample (Chen et
al. 2021's pass@k with n = k), ``val_reply_tokens``. ``val_loss`` = 1 - pass@1, so the loop's best
checkpoint is the one with the highest pass@1.

    data = rl_data(cfg, tok, tok_json, builtin_tasks(cfg.data, cfg.rl_eval_items), reference)
    train(cfg, data=data)                       # the loop's checkpoints, Ctrl-C and exact resume

Batches are a pure function of (seed, micro-batch index) and the weights, and sampling uses its own
seeded generators, so a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gptforge.chat import tasks as chat_tasks
from gptforge.chat.render import ChatTokens, render_for_completion
from gptforge.engine import ToolUse, generate_rows
from gptforge.errors import UserError
from gptforge.eval.chat import MAX_NEW, reply_parts
from gptforge.finetune.logprobs import masked_mean, token_logprobs
from gptforge.models import eval_mode
from gptforge.tokenizer import Tokenizer
from gptforge.tools import calculator
from gptforge.train.config import RL_DEFAULTS, RL_TASKS, TrainConfig, finetune_config
from gptforge.train.session import TrainData

TRAIN_POOL = 1000  # train prompts drawn per task (the run samples from them with replacement)

Item = tuple[list[dict], str]  # (prompt conversation of one user turn, reference answer)


@dataclass
class Task:
    """A verifiable task: prompts with reference answers and the checker that scores a reply.

    correct: ``(reply parts, reference) -> bool``, parts as ``gptforge.eval.chat.reply_parts``
    gives them (text, tool_call and tool_output dicts). max_new_tokens: reply length limit."""

    name: str
    train: list[Item]
    test: list[Item]
    correct: Callable[[list[dict], str], bool]
    max_new_tokens: int = 48


def builtin_tasks(spec: str, eval_items: int, seed: int = 0) -> list[Task]:
    """The tasks of a comma-separated ``spec`` (``RL_TASKS``, from `gptforge.chat.tasks`): ``TRAIN_POOL``
    train-split prompts in template-seen phrasings, and ``eval_items`` test-split ones (the first
    half in template-seen phrasings, the rest in held-out ones).

    Raises:
        UserError: an empty spec or an unknown task.
    """
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names or any(n not in RL_TASKS for n in names):
        raise UserError(f"--tasks {spec!r}: choose one or more of {', '.join(RL_TASKS)}, comma-separated")

    def pairs(drawn):
        return [(prompt, ref) for prompt, ref, _ in drawn]

    out = []
    for name in dict.fromkeys(names):
        # letter counting's reference is the item's call (see grounded_correct)
        draw = partial(chat_tasks.items, name, calls=name == "letter_count")
        test = (draw("test", eval_items - eval_items // 2, phrasings="train")
                + draw("test", eval_items // 2, phrasings="test"))
        out.append(Task(name, pairs(draw("train", TRAIN_POOL, seed, phrasings="train")), pairs(test),
                        lambda parts, ref, name=name: grounded_correct(name, parts, ref), MAX_NEW[name]))
    return out


def grounded_correct(task: str, parts: list[dict], reference: str) -> bool:
    """The reward's checker: the reply is right (`gptforge.chat.tasks.reply_correct`) *and* the right
    number came from a right call. Arithmetic: one of the calculator's outputs equals the reference
    (a wrong pair of operands rarely gives the right sum). Letter counting, whose reference is the
    item's call (``"berry".count("r")``; counts are small, so any call may give the right one): the
    reply makes that call (the same expression up to quotes and spaces) and answers its result.
    Paying a right number alone, RL learned to answer the commonest count, 1, to every question;
    paying any call whose output was right, calls on made-up words that give 1 (bench/README.md,
    "The SFT/RL split", "A reward that a guess cannot earn")."""
    if task == "social":  # right means no tool call at all
        return chat_tasks.reply_correct(task, parts, reference)
    if task == "letter_count":
        made = {_expression(p["text"]) for p in parts if p["type"] == "tool_call"}
        return _expression(reference) in made and chat_tasks.reply_correct(task, parts, calculator(reference))
    return chat_tasks.reply_correct(task, parts, reference) and any(
        p["type"] == "tool_output" and chat_tasks.same_number(p["text"].strip(), reference) for p in parts)


def _expression(text: str) -> str | None:
    """A Python expression's syntax tree as text (quotes and spaces do not matter), None if none."""
    try:
        return ast.dump(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


# ---------------------------------------------------------------------------------------------
# advantages and the loss

def group_advantages(rewards: torch.Tensor, k: int, std: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Advantages of rewards (N,) float in groups of k consecutive replies to one prompt: each
    minus its group's mean (``std``: then divided by the group's standard deviation + eps, GRPO's
    normalisation). Returns (N,) float; each group's advantages sum to 0.

    Raises:
        ValueError: N is not a multiple of k.
    """
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {k}")
    g = rewards.view(-1, k)
    adv = g - g.mean(dim=1, keepdim=True)
    if std:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def policy_gradient_loss(logp: torch.Tensor, y: torch.Tensor, advantages: torch.Tensor,
                         ref_logp: torch.Tensor | None = None, kl: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, kl_estimate)``: the policy-gradient loss -mean over scored tokens of A * log pi, plus
    ``kl`` times the mean per-token KL estimate exp(q) - q - 1 (q = ref_logp - logp) when
    ``ref_logp`` is given (the estimate, detached, is 0 without it).

    logp, ref_logp: (B, T) float log-probabilities of the targets (``token_logprobs``); y: (B, T)
    targets, -1 where not scored; advantages: (B,) float, one per reply."""
    pg = masked_mean(-advantages[:, None] * logp, y)
    if ref_logp is None:
        return pg, torch.zeros((), device=logp.device)
    q = ref_logp - logp
    k3 = masked_mean(torch.exp(q) - q - 1, y)
    return (pg + kl * k3 if kl else pg), k3.detach()


# ---------------------------------------------------------------------------------------------
# rollouts

class Prompts(NamedTuple):
    """What ``RLBatches.get`` gives: ``ids`` G prompts (token ids, ending with
    ``<|assistant_start|>``), ``task`` the index of each one's task, ``reference`` its answer,
    ``seed`` the sampling seed of this micro-batch."""

    ids: list[list[int]]
    task: list[int]
    reference: list[str]
    seed: int


class Rollouts(NamedTuple):
    """k replies per prompt as tensors: x, y (N, T) int64 (y -1 on prompt, tool-output and padding
    targets), rewards (N,) float32, reply_tokens (N,) int64 (sampled and forced)."""

    x: torch.Tensor
    y: torch.Tensor
    rewards: torch.Tensor
    reply_tokens: torch.Tensor


def rollout_rows(prompt: list[int], reply: list[int], sampled: list[bool], T: int, pad: int
                 ) -> tuple[list[int], list[int]]:
    """(x, y) of one prompt + reply, T tokens each: y is the next token where the model sampled it,
    -1 on the prompt, on forced (tool output) tokens and on the padding."""
    ids = prompt + reply
    trained = [False] * len(prompt) + list(sampled)
    y = [t if m else -1 for t, m in zip(ids[1:], trained[1:], strict=True)]
    x = ids[:-1]
    return (x + [pad] * (T - len(x)))[:T], (y + [-1] * (T - len(y)))[:T]


def rollouts(model: torch.nn.Module, tok: Tokenizer, tasks: list[Task], prompts: Prompts, k: int,
             device="cpu") -> Rollouts:
    """Sample k replies to each prompt with ``model`` (temperature 1, the calculator on, row i
    seeded ``prompts.seed + i``), score them with their task's checker, and lay them out as
    tensors on ``device`` (``Rollouts``). A reply ends at ``<|assistant_end|>`` (kept, sampled) or
    at ``<|endoftext|>`` (kept; what follows it is dropped); prompts keep their last
    ``block_size - max_new_tokens`` tokens."""
    t = ChatTokens(tok)
    max_new = max(tasks[i].max_new_tokens for i in prompts.task)
    keep = max(1, model.config.block_size - max_new)
    ids = [p[-keep:] for p in prompts.ids for _ in range(k)]
    with eval_mode(model):
        rows = generate_rows(model, ids, max_new, temperature=1.0, seed=prompts.seed,
                             stop_tokens=[t.assistant_end], tool=ToolUse.from_tokenizer(tok))
    xy, rewards, lengths = [], [], []
    T = max(len(p) + len(r.tokens) for p, r in zip(ids, rows, strict=True))
    for n, (p, r) in enumerate(zip(ids, rows, strict=True)):
        reply, sampled = list(r.tokens), list(r.sampled)
        if t.eot in reply:
            cut = reply.index(t.eot) + 1
            reply, sampled = reply[:cut], sampled[:cut]
        elif r.stopped:
            reply, sampled = reply + [t.assistant_end], sampled + [True]
        task = tasks[prompts.task[n // k]]
        rewards.append(float(task.correct(reply_parts(reply, tok), prompts.reference[n // k])))
        lengths.append(len(reply))
        xy.append(rollout_rows(p, reply, sampled, T, t.eot))
    xs, ys = zip(*xy, strict=True)
    return Rollouts(torch.tensor(xs, device=device), torch.tensor(ys, device=device),
                    torch.tensor(rewards, device=device), torch.tensor(lengths, device=device))


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """The module itself under DDP (``.module``) and torch.compile (``._orig_mod``): the engine
    decodes with its KV cache."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@dataclass
class RLBatches:
    """B / k train prompts per micro-batch, drawn uniformly (task, then prompt) with replacement:
    ``get(index, device) -> Prompts``, a pure function of (seed, index)."""

    pool: list[tuple[int, list[int], str]]  # (task index, prompt ids, reference)
    prompts: int
    seed: int

    def get(self, index: int, device="cpu") -> Prompts:
        rng = np.random.default_rng([self.seed, index])
        pick = [self.pool[i] for i in rng.integers(0, len(self.pool), size=self.prompts)]
        return Prompts([p for _, p, _ in pick], [t for t, _, _ in pick], [r for _, _, r in pick],
                       int(rng.integers(0, 2**62)))


def rl_loss(tok: Tokenizer, tasks: list[Task], k: int, kl: float, std: bool, reference: torch.nn.Module):
    """The loop's loss_fn: ``(model, Prompts) -> (loss, stats)``: sample (on-policy: ``model`` is the
    policy being trained), reward, advantages, and the policy-gradient loss with the KL term
    against ``reference`` (frozen; moved to the batch's device). stats: ``reward`` (mean),
    ``reply_tokens`` (mean), ``kl`` (per-token estimate), ``mixed`` (share of groups not all right
    or all wrong: the ones that teach)."""

    def loss_fn(model, prompts: Prompts):
        device = next(model.parameters()).device
        ro = rollouts(_plain(model), tok, tasks, prompts, k, device)
        adv = group_advantages(ro.rewards, k, std)
        with eval_mode(model):
            logp = token_logprobs(model, ro.x, ro.y)
        with torch.no_grad():
            ref_logp = token_logprobs(reference.to(device), ro.x, ro.y)
        loss, kl_est = policy_gradient_loss(logp, ro.y, adv, ref_logp, kl)
        groups = ro.rewards.view(-1, k)
        mixed = (groups.max(dim=1).values != groups.min(dim=1).values).float().mean()
        return loss, {"reward": ro.rewards.mean(), "reply_tokens": ro.reply_tokens.float().mean(),
                      "kl": kl_est, "mixed": mixed}

    return loss_fn


def rl_data(cfg: TrainConfig, tok: Tokenizer, tokenizer_json: str | Path, tasks: list[Task],
            reference: torch.nn.Module) -> TrainData:
    """The TrainData of an RL run on ``tasks`` (module docstring): ``cfg.batch_size`` replies per
    micro-batch in groups of ``cfg.rl_samples``; ``reference`` is the frozen starting model (for
    the KL estimate and penalty; put in eval mode, never trained).

    Raises:
        UserError: no chat tokens, a batch size that is not a multiple of rl_samples, or a task
            without train or test prompts.
    """
    ChatTokens(tok)
    k = cfg.rl_samples
    if cfg.batch_size % k:
        raise UserError(f"--batch-size {cfg.batch_size} counts replies: it must be a multiple of the "
                        f"{k} samples per prompt (--samples)")
    for task in tasks:
        if not task.train or not task.test:
            raise UserError(f"task {task.name}: no train or no test prompts")
    pool = [(i, render_for_completion(p, tok), ref) for i, task in enumerate(tasks) for p, ref in task.train]
    held_out = [(i, render_for_completion(p, tok), ref) for i, task in enumerate(tasks)
                for p, ref in task.test]
    reference.eval().requires_grad_(False)
    per_batch = cfg.batch_size // k

    @torch.no_grad()
    def evaluate(model, d, amp):
        sums = torch.zeros(4, dtype=torch.float64)  # right samples, prompts with one right, prompts, tokens
        mine = held_out[d.rank::d.world]
        for s in range(0, len(mine), per_batch):
            chunk = mine[s:s + per_batch]
            prompts = Prompts([p for _, p, _ in chunk], [t for t, _, _ in chunk], [r for _, _, r in chunk],
                              cfg.seed + 1_000_003 * (d.rank * len(mine) + s + 1))
            with amp:
                ro = rollouts(_plain(model), tok, tasks, prompts, k, d.device)
            right = ro.rewards.view(-1, k).cpu().double()
            sums += torch.tensor([right.sum(), (right.max(dim=1).values > 0).sum(), len(chunk),
                                  ro.reply_tokens.sum().item()], dtype=torch.float64)
        d.all_sum(sums)
        right, solved, n, tokens = sums.tolist()
        pass1 = right / (n * k)
        return {"val_loss": 1 - pass1, "val_pass1": pass1, f"val_pass{k}": solved / n,
                "val_reply_tokens": tokens / (n * k)}

    T = cfg.block_size
    return TrainData(batches=RLBatches(pool, per_batch, cfg.seed),
                     loss_fn=rl_loss(tok, tasks, k, cfg.rl_kl, cfg.rl_std, reference),
                     val_batches=lambda rank, world, device: iter(()),
                     train_tokens=sum(len(p) for _, p, _ in pool), eval_tokens=len(held_out) * k * T,
                     tokenizer_json=Path(tokenizer_json), tokenizer=tok.identity(),
                     token_bytes=tok.token_bytes(), evaluate=evaluate)


def rl_config(base: str | Path, *layers: dict) -> TrainConfig:
    """The config of an RL run from SFT run or checkpoint ``base``: its config, then RL_DEFAULTS,
    then ``layers`` (flags) (`gptforge.train.config.finetune_config`).

    Raises:
        UserError: no checkpoint at ``base``, a model that is not a GPT, or a bad setting.
    """
    return finetune_config(base, "rl", RL_DEFAULTS, *layers, purpose="RL tunes GPT chat models")


def rl_run_data(cfg: TrainConfig) -> TrainData:
    """``rl_data`` for ``cfg``: the built-in tasks of ``cfg.data``, the tokenizer and the frozen
    reference of its ``init_from`` checkpoint (loaded where training runs).

    Raises:
        UserError: bad tasks, a missing checkpoint, or no chat tokens.
    """
    from gptforge import checkpoint as ckpt
    from gptforge.tokenizer import load_tokenizer

    start = ckpt.find_checkpoint(cfg.init_from)
    tok = load_tokenizer(start / "tokenizer.json")
    tasks = builtin_tasks(cfg.data, cfg.rl_eval_items, cfg.seed)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    reference, _ = ckpt.load_checkpoint(start, "latest", device)
    return rl_data(cfg, tok, start / "tokenizer.json", tasks, reference)
