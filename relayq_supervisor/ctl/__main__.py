import sys

from relayq_supervisor.ctl import main

sys.exit(main())
