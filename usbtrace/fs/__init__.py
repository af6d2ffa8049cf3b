"""File systems on the wire: partition tables, FAT/exFAT layouts and the shadow volume."""
