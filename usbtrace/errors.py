"""One exception hierarchy; every message says what to do about it."""


class UsbtraceError(Exception):
    """Base of every error a user can see; the CLI prints it on one line."""


class InputError(UsbtraceError):
    """A bad argument, path or file from the user."""


class CaptureFormatError(InputError):
    """A capture file that is not pcap/pcapng, or a linktype we do not read."""


class DatabaseError(UsbtraceError):
    """A database that is not ours, or of a schema version we cannot read."""


class DeviceError(UsbtraceError):
    """A device that cannot be reached, opened or driven."""
