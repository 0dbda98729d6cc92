"""Offline evaluation: metrics, baselines, splits and methods, the HTML report."""
