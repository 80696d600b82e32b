"""Workers for flowcast ``task`` nodes.

A worker claims tasks from the daemon's queues (long-polling), runs a
handler on each one's input, heartbeats while the handler runs (carrying
progress the handler reports), and completes or fails the task. Only the
standard library is used.

    from flowcast_worker import Worker

    def greet(task):
        task.progress(0.5, "thinking")
        return {"greeting": "hello " + task.input["name"]}

    Worker("http://127.0.0.1:8081", queues=["greet"], handler=greet, user="alice").run()
"""

from .client import Client, ApiError
from .worker import Task, TaskFailed, Worker

__all__ = ["ApiError", "Client", "Task", "TaskFailed", "Worker"]
__version__ = "0.1.0"
