"""gpu_check.py's parts: plan (what runs where, and its estimates), runners (running the checks), table (results)."""
