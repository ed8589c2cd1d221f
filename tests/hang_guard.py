"""The one time limit tests put on a subprocess, a thread or a server: a guard against a hang.

It is not a speed limit. On a 2-core machine shared with other jobs (load average 14) starting a
Python process that imports torch has taken more than 120 s, so a bound that any real hang
exceeds and no slow machine reaches: a hung test still fails, minutes later instead of never.
"""

HANG_GUARD_S = 900
