"""Mass storage: Bulk-Only Transport, SCSI commands and sense, SRBs, NTSTATUS mapping."""
