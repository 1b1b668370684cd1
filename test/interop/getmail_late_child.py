"""Run getmail (path in argv[1], remaining arguments passed on) with each
forked child pausing briefly before it does anything.

getmail 6.18 forks its delivery child first and installs its SIGCHLD handler
afterwards (getmailcore.baseclasses.ForkingBase.forkchild); when the child
finishes before the parent is waiting, the exit goes unnoticed and getmail
gives up with "waiting child pid N timed out". This is a client-side race with
nothing to do with POP3; delaying the child only changes timing (as a slow
disk would), not what getmail does.
"""
import os
import runpy
import sys
import time

_fork = os.fork


def _fork_with_late_child():
    pid = _fork()
    if pid == 0:
        time.sleep(0.05)
    return pid


os.fork = _fork_with_late_child

getmail = sys.argv[1]
sys.argv = [getmail] + sys.argv[2:]
runpy.run_path(getmail, run_name='__main__')
