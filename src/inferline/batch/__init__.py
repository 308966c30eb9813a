"""Files and batch jobs (the OpenAI Batch API), resumable execution, carbon-aware windows."""
