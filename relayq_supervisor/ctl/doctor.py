"""`relayqctl doctor`: rival managers of Redis and the workers, and programs that run jobs as root."""
from __future__ import annotations

import json
import os

import psutil

from relayq_supervisor import doctor
from relayq_supervisor.config import default_config_path, load_config
from relayq_supervisor.control.protocol import EXIT_FAILURE, EXIT_OK
from relayq_supervisor.ctl.client import call, checked
from relayq_supervisor.ctl.display import say
from relayq_supervisor.doctor.privilege import root_program_warnings
from relayq_supervisor.errors import RelayqError


def run_doctor(args) -> int:
    from relayq_supervisor.node import doctor_target
    config = load_config(args.config or default_config_path())
    own = set()
    supervisor_uid = os.geteuid()       # not running: as whoever would start it now
    try:        # what the running supervisor owns is not a rival
        pid = checked(call(args.socket or config.supervisor.control_socket, "pid", 5.0))["pid"]
        own = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
        supervisor_uid = psutil.Process(pid).uids().effective
    except (RelayqError, psutil.Error):
        pass
    root = args.root or config.supervisor.doctor_root
    rivals = doctor.find_rivals(doctor_target(config, own), root=root, scan_processes=root == "/")
    warnings = root_program_warnings(config, supervisor_uid)
    if args.json:
        print(json.dumps({"root": root, "rivals": [r.to_dict() for r in rivals], "warnings": warnings}, indent=2))
    else:
        print(doctor.format_report(rivals))
        for warning in warnings:
            say(f"warning: {warning}")
    return EXIT_FAILURE if rivals else EXIT_OK
