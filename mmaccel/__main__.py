import sys

from mmaccel.cli import main

sys.exit(main())
