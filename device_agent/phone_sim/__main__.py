"""`python -m device_agent.phone_sim --port 0 --root DIR`: run one phone emulator."""

import sys

from .cli import main

sys.exit(main())
