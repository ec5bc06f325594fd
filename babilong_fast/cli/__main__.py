"""``python -m babilong_fast.cli``: the same as the ``babilong-fast`` command."""
from __future__ import annotations

import sys

from babilong_fast.cli.main import main

sys.exit(main())
