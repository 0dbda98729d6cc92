"""The nearline user state: the event contract, event log, profile math, profile store, replay."""
