"""The schema for a SQLite file, as ``sqlite3`` alone creates and writes it.

Generated from usbtrace/store/schema.py by
'python -m usbtrace.store.ddl --python > usbtrace/store/sqlite_schema.py';
tests/test_schema.py fails when it differs from the models.  Do not edit.
"""
# ruff: noqa: E501

SCHEMA_VERSION = 3

# what Base.metadata.create_all runs on a new file: tables, their indexes, views
CREATE_STATEMENTS = (
    (
        '\n'
        'CREATE TABLE sessions (\n'
        '\tid INTEGER NOT NULL, \n'
        '\tsource VARCHAR(32) NOT NULL, \n'
        '\tsource_name TEXT NOT NULL, \n'
        '\tstarted_at VARCHAR(40) NOT NULL, \n'
        '\trecord_count INTEGER NOT NULL, \n'
        '\tdropped_count INTEGER NOT NULL, \n'
        '\tmalformed_count INTEGER NOT NULL, \n'
        '\tcommand_count INTEGER NOT NULL, \n'
        '\tduration FLOAT, \n'
        '\ttime_origin FLOAT, \n'
        '\tclock VARCHAR(16) NOT NULL, \n'
        '\tlinktype INTEGER, \n'
        '\tfile_sha256 VARCHAR(64), \n'
        '\tstate VARCHAR(12) NOT NULL, \n'
        '\tnotes TEXT, \n'
        '\twriter_host VARCHAR(255), \n'
        '\twriter_pid INTEGER, \n'
        '\tusbtrace_version VARCHAR(40), \n'
        '\tcommand_line TEXT, \n'
        '\tPRIMARY KEY (id)\n'
        ')\n'
        '\n'
    ),
    (
        'CREATE INDEX ix_sessions_file_sha256 ON sessions (file_sha256)'
    ),
    (
        '\n'
        'CREATE TABLE usbtrace_meta (\n'
        '\t"key" VARCHAR(64) NOT NULL, \n'
        '\tvalue TEXT NOT NULL, \n'
        '\tPRIMARY KEY ("key")\n'
        ')\n'
        '\n'
    ),
    (
        '\n'
        'CREATE TABLE devices (\n'
        '\tsession_id INTEGER NOT NULL, \n'
        '\tbus INTEGER NOT NULL, \n'
        '\tdevice INTEGER NOT NULL, \n'
        '\tvid INTEGER, \n'
        '\tpid INTEGER, \n'
        '\tdevice_class INTEGER, \n'
        '\tmanufacturer TEXT, \n'
        '\tproduct TEXT, \n'
        '\tserial TEXT, \n'
        '\tmass_storage_interfaces TEXT, \n'
        '\tPRIMARY KEY (session_id, bus, device), \n'
        '\tFOREIGN KEY(session_id) REFERENCES sessions (id)\n'
        ')\n'
        '\n'
    ),
    (
        '\n'
        'CREATE TABLE file_activity (\n'
        '\tsession_id INTEGER NOT NULL, \n'
        '\tid INTEGER NOT NULL, \n'
        '\tscsi_seq INTEGER NOT NULL, \n'
        '\tpath TEXT, \n'
        '\toperation VARCHAR(12) NOT NULL, \n'
        '\tkind VARCHAR(20) NOT NULL, \n'
        '\tfile_offset BIGINT, \n'
        '\tlength BIGINT, \n'
        '\tlba BIGINT, \n'
        '\tcommand_offset BIGINT, \n'
        '\tdetail TEXT, \n'
        '\tPRIMARY KEY (session_id, id), \n'
        '\tFOREIGN KEY(session_id) REFERENCES sessions (id)\n'
        ')\n'
        '\n'
    ),
    (
        'CREATE INDEX ix_file_activity_command ON file_activity (session_id, scsi_seq)'
    ),
    (
        'CREATE INDEX ix_file_activity_path ON file_activity (session_id, path) WHERE path IS NOT NULL'
    ),
    (
        '\n'
        'CREATE TABLE gaps (\n'
        '\tsession_id INTEGER NOT NULL, \n'
        '\tseq INTEGER NOT NULL, \n'
        '\tat FLOAT, \n'
        '\tdropped INTEGER NOT NULL, \n'
        '\tPRIMARY KEY (session_id, seq), \n'
        '\tFOREIGN KEY(session_id) REFERENCES sessions (id)\n'
        ')\n'
        '\n'
    ),
    (
        '\n'
        'CREATE TABLE irps (\n'
        '\tsession_id INTEGER NOT NULL, \n'
        '\tseq INTEGER NOT NULL, \n'
        '\tirp_id VARCHAR(20) NOT NULL, \n'
        '\tparent_irp_id VARCHAR(20), \n'
        '\tposition VARCHAR(8) NOT NULL, \n'
        '\tmajor VARCHAR(32) NOT NULL, \n'
        '\tminor VARCHAR(40), \n'
        '\tioctl VARCHAR(48), \n'
        '\tstatus VARCHAR(48), \n'
        '\tinformation BIGINT, \n'
        '\tdetail TEXT, \n'
        '\t"offset" BIGINT, \n'
        '\tlength BIGINT, \n'
        '\tfile_object INTEGER, \n'
        '\tsubmitted_at FLOAT, \n'
        '\tcompleted_at FLOAT, \n'
        '\tPRIMARY KEY (session_id, seq), \n'
        '\tFOREIGN KEY(session_id) REFERENCES sessions (id)\n'
        ')\n'
        '\n'
    ),
    (
        'CREATE INDEX ix_irps_irp ON irps (session_id, irp_id)'
    ),
    (
        'CREATE INDEX ix_irps_parent ON irps (session_id, parent_irp_id)'
    ),
    (
        '\n'
        'CREATE TABLE scsi_commands (\n'
        '\tsession_id INTEGER NOT NULL, \n'
        '\tseq INTEGER NOT NULL, \n'
        '\tbus INTEGER, \n'
        '\tdevice INTEGER, \n'
        '\tlun INTEGER NOT NULL, \n'
        '\ttag BIGINT NOT NULL, \n'
        '\topcode INTEGER NOT NULL, \n'
        '\tname VARCHAR(40) NOT NULL, \n'
        '\tcdb BLOB NOT NULL, \n'
        '\tlba BIGINT, \n'
        '\tblocks BIGINT, \n'
        '\tdata_direction VARCHAR(4) NOT NULL, \n'
        '\texpected_length BIGINT NOT NULL, \n'
        '\tdata_length BIGINT NOT NULL, \n'
        '\tdata_truncated BOOLEAN NOT NULL, \n'
        '\tresidue BIGINT, \n'
        '\tstatus VARCHAR(16) NOT NULL, \n'
        '\tsense_key VARCHAR(24), \n'
        '\t"asc" INTEGER, \n'
        '\tascq INTEGER, \n'
        '\tirp_id VARCHAR(20) NOT NULL, \n'
        '\tcbw_seq INTEGER NOT NULL, \n'
        '\tcsw_seq INTEGER, \n'
        '\tsubmitted_at FLOAT, \n'
        '\tcompleted_at FLOAT, \n'
        '\tPRIMARY KEY (session_id, seq), \n'
        '\tFOREIGN KEY(session_id) REFERENCES sessions (id)\n'
        ')\n'
        '\n'
    ),
    (
        'CREATE INDEX ix_scsi_commands_cbw ON scsi_commands (session_id, cbw_seq)'
    ),
    (
        '\n'
        'CREATE TABLE urbs (\n'
        '\tsession_id INTEGER NOT NULL, \n'
        '\tseq INTEGER NOT NULL, \n'
        '\tirp_id VARCHAR(20) NOT NULL, \n'
        '\trecord_number INTEGER, \n'
        '\tsubmitted_at FLOAT, \n'
        '\tcompleted_at FLOAT, \n'
        '\tbus INTEGER, \n'
        '\tdevice INTEGER, \n'
        '\tendpoint INTEGER NOT NULL, \n'
        '\ttransfer_type VARCHAR(12) NOT NULL, \n'
        '\tdirection VARCHAR(3) NOT NULL, \n'
        '\turb_function VARCHAR(48), \n'
        '\tstatus VARCHAR(48), \n'
        '\trequested_length BIGINT, \n'
        '\tactual_length BIGINT, \n'
        '\tcaptured_length BIGINT NOT NULL, \n'
        '\ttruncated BOOLEAN NOT NULL, \n'
        '\tsetup BLOB, \n'
        '\tdata BLOB, \n'
        '\tstream_id INTEGER, \n'
        '\tPRIMARY KEY (session_id, seq), \n'
        '\tFOREIGN KEY(session_id) REFERENCES sessions (id)\n'
        ')\n'
        '\n'
    ),
    (
        'CREATE INDEX ix_urbs_irp ON urbs (session_id, irp_id)'
    ),
    (
        'CREATE VIEW command_data AS\n'
        'SELECT c.session_id, c.seq AS command_seq, c.bus, c.device, c.lun, c.tag,\n'
        '       c.name AS command, c.lba, c.blocks, c.data_direction, c.data_length,\n'
        '       c.status AS command_status, c.submitted_at, c.completed_at,\n'
        '       u.seq AS urb_seq, u.endpoint, u.status AS urb_status,\n'
        '       u.requested_length, u.actual_length, u.captured_length, u.truncated, u.data\n'
        'FROM scsi_commands c\n'
        'LEFT JOIN urbs u ON u.session_id = c.session_id\n'
        ' AND u.seq > c.cbw_seq AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000)\n'
        ' AND u.bus IS NOT DISTINCT FROM c.bus AND u.device IS NOT DISTINCT FROM c.device\n'
        " AND u.transfer_type = 'bulk' AND u.direction = c.data_direction"
    ),
    (
        'CREATE VIEW io_chain AS\n'
        'SELECT r.session_id, r.seq AS request_seq, r.irp_id AS request_irp, r.major,\n'
        '       r.offset, r.length, r.status AS request_status,\n'
        '       r.submitted_at AS request_submitted_at, r.completed_at AS request_completed_at,\n'
        '       s.seq AS srb_seq, s.irp_id AS srb_irp, s.status AS srb_status,\n'
        '       u.seq AS urb_seq, u.bus, u.device, u.endpoint, u.transfer_type, u.direction,\n'
        '       u.actual_length, u.status AS urb_status\n'
        'FROM irps r\n'
        'JOIN irps s ON s.session_id = r.session_id AND s.parent_irp_id = r.irp_id\n'
        " AND s.position = 'lower' AND s.seq > r.seq\n"
        ' AND NOT EXISTS (SELECT 1 FROM irps r2 WHERE r2.session_id = r.session_id\n'
        "                 AND r2.irp_id = r.irp_id AND r2.position = 'upper'\n"
        '                 AND r2.seq > r.seq AND r2.seq < s.seq)\n'
        'JOIN urbs u ON u.session_id = s.session_id AND u.seq = s.seq\n'
        "WHERE r.position = 'upper' AND r.major IN ('read', 'write')"
    ),
    (
        'CREATE VIEW file_activity_commands AS\n'
        'SELECT f.session_id, f.id AS activity_id, f.path, f.operation, f.kind,\n'
        '       f.file_offset, f.length, f.lba AS activity_lba, f.command_offset, f.detail,\n'
        '       c.seq AS command_seq, c.bus, c.device, c.lun, c.name AS command, c.lba, c.blocks,\n'
        '       c.status AS command_status, c.submitted_at, c.completed_at\n'
        'FROM file_activity f\n'
        'JOIN scsi_commands c ON c.session_id = f.session_id AND c.seq = f.scsi_seq'
    ),
)

# table -> its columns in order: (name, nullable without a server default, boolean)
COLUMNS = {
    'sessions': (
        ('id', False, False),
        ('source', False, False),
        ('source_name', False, False),
        ('started_at', False, False),
        ('record_count', False, False),
        ('dropped_count', False, False),
        ('malformed_count', False, False),
        ('command_count', False, False),
        ('duration', True, False),
        ('time_origin', True, False),
        ('clock', False, False),
        ('linktype', True, False),
        ('file_sha256', True, False),
        ('state', False, False),
        ('notes', True, False),
        ('writer_host', True, False),
        ('writer_pid', True, False),
        ('usbtrace_version', True, False),
        ('command_line', True, False),
    ),
    'usbtrace_meta': (
        ('key', False, False),
        ('value', False, False),
    ),
    'devices': (
        ('session_id', False, False),
        ('bus', False, False),
        ('device', False, False),
        ('vid', True, False),
        ('pid', True, False),
        ('device_class', True, False),
        ('manufacturer', True, False),
        ('product', True, False),
        ('serial', True, False),
        ('mass_storage_interfaces', True, False),
    ),
    'file_activity': (
        ('session_id', False, False),
        ('id', False, False),
        ('scsi_seq', False, False),
        ('path', True, False),
        ('operation', False, False),
        ('kind', False, False),
        ('file_offset', True, False),
        ('length', True, False),
        ('lba', True, False),
        ('command_offset', True, False),
        ('detail', True, False),
    ),
    'gaps': (
        ('session_id', False, False),
        ('seq', False, False),
        ('at', True, False),
        ('dropped', False, False),
    ),
    'irps': (
        ('session_id', False, False),
        ('seq', False, False),
        ('irp_id', False, False),
        ('parent_irp_id', True, False),
        ('position', False, False),
        ('major', False, False),
        ('minor', True, False),
        ('ioctl', True, False),
        ('status', True, False),
        ('information', True, False),
        ('detail', True, False),
        ('offset', True, False),
        ('length', True, False),
        ('file_object', True, False),
        ('submitted_at', True, False),
        ('completed_at', True, False),
    ),
    'scsi_commands': (
        ('session_id', False, False),
        ('seq', False, False),
        ('bus', True, False),
        ('device', True, False),
        ('lun', False, False),
        ('tag', False, False),
        ('opcode', False, False),
        ('name', False, False),
        ('cdb', False, False),
        ('lba', True, False),
        ('blocks', True, False),
        ('data_direction', False, False),
        ('expected_length', False, False),
        ('data_length', False, False),
        ('data_truncated', False, True),
        ('residue', True, False),
        ('status', False, False),
        ('sense_key', True, False),
        ('asc', True, False),
        ('ascq', True, False),
        ('irp_id', False, False),
        ('cbw_seq', False, False),
        ('csw_seq', True, False),
        ('submitted_at', True, False),
        ('completed_at', True, False),
    ),
    'urbs': (
        ('session_id', False, False),
        ('seq', False, False),
        ('irp_id', False, False),
        ('record_number', True, False),
        ('submitted_at', True, False),
        ('completed_at', True, False),
        ('bus', True, False),
        ('device', True, False),
        ('endpoint', False, False),
        ('transfer_type', False, False),
        ('direction', False, False),
        ('urb_function', True, False),
        ('status', True, False),
        ('requested_length', True, False),
        ('actual_length', True, False),
        ('captured_length', False, False),
        ('truncated', False, True),
        ('setup', True, False),
        ('data', True, False),
        ('stream_id', True, False),
    ),
}
