"""Device backends beneath the bus driver: simulated stick, hardware, replay."""
