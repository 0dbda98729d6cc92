"""Thin Ray entrypoints: parse args -> load config -> run -> exit code."""
