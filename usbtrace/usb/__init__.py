"""USB chapter 9: descriptors, setup packets, URBs and bus speeds."""
