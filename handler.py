"""RunPod entry point: build the worker, warm it, hand its async handler to the RunPod SDK."""

import runpod

from worker.config import Settings
from worker.logs import configure_logging
from worker.worker import Worker

if __name__ == "__main__":
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    worker = Worker(settings)
    runpod.serverless.register_fitness_check(worker.fitness_check)
    worker.start()
    runpod.serverless.start({"handler": worker.handle})
