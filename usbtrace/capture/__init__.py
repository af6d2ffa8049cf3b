"""Capture files: pcap/pcapng containers, usbmon and USBPcap records."""
