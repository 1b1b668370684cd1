"""Run getmail (path in argv[1], remaining arguments passed on) with its
delivery children reaped by a plain blocking waitpid().

getmail 6.18 forks a child for each delivery and waits for it through a
SIGCHLD handler and a condition variable
(getmailcore.baseclasses.ForkingBase): the handler is installed only after
fork(), and its notification is sent whether or not the parent already waits.
When the child ends before the parent waits, the exit is never seen and getmail
stops after `timeout` seconds with "waiting child pid N timed out", a failure
that depends only on scheduling. Here the parent waits for exactly its child
with waitpid(), which cannot miss an exit; everything else getmail does, POP3
included, is unchanged.
"""
import os
import runpy
import sys

getmail = sys.argv[1]
# getmail's own modules come from next to the script's interpreter (its shebang).
from getmailcore.baseclasses import ForkingBase  # noqa: E402
from getmailcore.exceptions import getmailOperationError  # noqa: E402


def _prepare_child(self):
    pass  # no SIGCHLD handler: _wait_for_child reaps the child itself


def _wait_for_child(self, childpid):
    _, status = os.waitpid(childpid, 0)
    if os.WIFSIGNALED(status):
        raise getmailOperationError('child pid %d killed by signal %d' % (childpid, os.WTERMSIG(status)))
    return os.WEXITSTATUS(status)


ForkingBase._prepare_child = _prepare_child
ForkingBase._wait_for_child = _wait_for_child

sys.argv = [getmail] + sys.argv[2:]
runpy.run_path(getmail, run_name='__main__')
