"""Periodic jobs, run by the scheduler actor of a server started with --schedule-periodic."""
from datetime import datetime, timedelta

from pq import api


@api.job(run_every=timedelta(seconds=1))
def testperiodic(self):
    return "OK"


@api.job(run_every=timedelta(seconds=1))
def testperiodicerror(self, msg=""):
    raise RuntimeError(f"kaput {msg}")


@api.job(run_every=timedelta(hours=1), anchor=datetime(2000, 1, 1))
def anchoredeveryhour(self):
    return "OK"
