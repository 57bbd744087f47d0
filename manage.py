"""The example server: ``python manage.py -w 4`` (``--help`` lists every setting)."""
from pq.api import PulsarQueue

task_paths = ["sampletasks.*", "pq.jobs"]


def app() -> PulsarQueue:
    return PulsarQueue(config=__file__)


if __name__ == "__main__":
    app().start()
