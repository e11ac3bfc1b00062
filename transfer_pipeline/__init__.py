"""Declarative transfer learning: config -> partial load -> freeze -> per-group LRs -> train."""

__version__ = "0.1.0"
