import sys

from .cli import supervisor_main

sys.exit(supervisor_main())
