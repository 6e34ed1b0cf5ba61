"""The HTTP API over runs, sweeps, configs, jobs and paper sessions (FastAPI, served by uvicorn)."""
