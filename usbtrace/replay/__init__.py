"""Replay of recordings: device mode (the stack against the recorded device) and
host mode (the recorded host against a target device), with a divergence report."""
