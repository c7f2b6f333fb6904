"""The client of the GPU worker: submit jobs to its RunPod endpoint (or a pod), wait, fetch the outputs.

Installs with `requests` alone (`pip install .`); it never imports the server (`worker`, `cache`) nor torch.
"""
