"""LM arena: blind pairwise battles between chat models, votes in SQLite (store), Bradley-Terry
ratings with bootstrap intervals (ratings), an offline tournament judged by known answers (auto),
and Direct Preference Optimization on the votes (dpo)."""
