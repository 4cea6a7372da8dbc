"""Benchmarks: lifelong editing, unlearning and adapter merging, driven through the session API."""
