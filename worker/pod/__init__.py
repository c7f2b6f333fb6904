"""Pod mode: the hosted RunPod API's routes and semantics served by one pod, with a web UI.

`job_queue.PodQueue` runs the jobs one at a time and keeps their records on the volume; `api.create_app` serves
the routes (`/run`, `/runsync`, `/status`, ...) under `/v2/<any endpoint id>/` and at the root; `web_ui` adds the
browser page at `/ui`. Start it with `python handler.py --pod`.
"""
