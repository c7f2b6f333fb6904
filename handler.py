"""Entry point: build the worker, warm it, and hand it to the RunPod SDK (serverless, `--test_input`,
`--rp_serve_api`: the SDK reads its own flags) or, with `--pod [--host H] [--port P]` or MODE=pod (the Docker
image's switch), to the pod server, which answers the hosted API's routes and serves the web UI."""

import argparse
import sys

import runpod

from worker.config import Settings
from worker.logs import configure_logging, redact_runpod_logs
from worker.worker import Worker


def pod_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the hosted RunPod API and the web UI from this pod.")
    parser.add_argument("--pod", action="store_true", help="the default with MODE=pod")
    parser.add_argument("--host", default="0.0.0.0", help="without POD_API_KEY the server stays on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    return parser.parse_args(argv)


if __name__ == "__main__":
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    if "--pod" in sys.argv[1:] or settings.mode == "pod":
        from worker.pod.api import serve
        from worker.pod.job_queue import PodQueue

        options = pod_options(sys.argv[1:])
        queue = PodQueue(settings)
        worker = Worker(settings, progress_sink=queue.on_progress)
        worker.start()
        serve(queue.bind(worker), settings, options.host, options.port)
    else:
        worker = Worker(settings)
        runpod.serverless.register_fitness_check(worker.fitness_check)
        worker.start()
        redact_runpod_logs()  # the SDK prints whole jobs (s3Config's secret included) at DEBUG
        runpod.serverless.start({"handler": worker.handle})
