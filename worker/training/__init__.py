"""LoRA datasets and training on the resident SDXL pipeline: data loading, the training loop, kohya export."""
