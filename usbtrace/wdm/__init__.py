"""A model of the Windows Driver Model: IRPs, drivers, devices, PnP, power, I/O."""
