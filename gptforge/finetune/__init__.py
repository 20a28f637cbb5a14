"""Finetuning stages' shared pieces and reinforcement learning on verifiable rewards.

- ``gptforge.finetune.logprobs``: per-token log-probabilities of targets under a model (the policy
  or a frozen reference), and masked means over scored tokens; SFT, DPO and RL score only the
  tokens the assistant says.
- ``gptforge.finetune.rl``: `gptforge rl`, on-policy policy gradient with verifiable rewards
  (GRPO-style group baselines) on the training loop of gptforge.train.

SFT lives in gptforge.chat.sft and DPO in gptforge.arena.dpo; both run on the same loop.
"""
