import sys

from relayq_supervisor.selftest.command import main

sys.exit(main())
