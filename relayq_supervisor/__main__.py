import sys

from relayq_supervisor.cli import supervisor_main

sys.exit(supervisor_main())
