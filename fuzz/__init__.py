"""A structure-aware fuzzer for everything usbtrace reads from untrusted bytes.

Seeds are real captures (the shared third-party ones and the project's recordings).
Each input is a seed window with a few mutations that know the structure: pcap/pcapng
blocks and length fields, usbmon and USBPcap headers, setup packets, descriptors,
CBWs, CSWs, CDBs, sense data and FAT/exFAT metadata sectors in READ/WRITE payloads.
Each input runs in a worker process under a time and an address-space limit through
the targets in :mod:`fuzz.targets`; an exception outside the ``UsbtraceError`` family,
a timeout or a memory blow-up is a finding, minimised and kept in ``corpus/``.
"""
