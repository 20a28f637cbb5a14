# `python -m gptforge ...` (what `torchrun -m gptforge` runs)
from gptforge.cli import main

raise SystemExit(main())
