"""A job that uses a known amount of memory: `hold_memory.py MB QSTAT` touches every page of
MB megabytes and holds them until the server shows the job's resources_used.mem at MB or more
(the mom samples every 1-2 s): by construction, not a guessed sleep. Its walltime bounds it."""

import os
import re
import subprocess
import sys
import time

megabytes, qstat = int(sys.argv[1]), sys.argv[2]
block = bytearray(megabytes * 2**20)
for offset in range(0, len(block), 4096):  # resident: every page written once
    block[offset] = 1
job_id = os.environ["PBS_JOBID"]
while True:
    shown = subprocess.run([qstat, "-f", job_id], capture_output=True, text=True).stdout
    used = re.search(r"resources_used\.mem = (\d+)kb", shown)
    if used and int(used.group(1)) >= megabytes * 1024:
        print(f"the server saw {used.group(1)}kb", flush=True)
        break
    time.sleep(0.5)
