import sys

from pequod_agent.cli import main

sys.exit(main())
