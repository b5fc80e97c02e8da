"""``python -m mmaccel.eval <command>``: the same commands as ``mmaccel eval <command>``.

Also the entry for distributed runs: ``accelerate launch --multi_gpu --num_processes 2 -m mmaccel.eval compare``.
"""

import sys

from mmaccel.eval.commands import main

sys.exit(main())
