-- usbtrace database schema, version 3 (SQLite dialect).
-- Generated from usbtrace/store/schema.py by 'python -m usbtrace.store.ddl'.
-- Timestamps are seconds from the session start; names are lower-case.

CREATE TABLE sessions (
	id INTEGER NOT NULL, 
	source VARCHAR(32) NOT NULL, 
	source_name TEXT NOT NULL, 
	started_at VARCHAR(40) NOT NULL, 
	record_count INTEGER NOT NULL, 
	dropped_count INTEGER NOT NULL, 
	malformed_count INTEGER NOT NULL, 
	command_count INTEGER NOT NULL, 
	duration FLOAT, 
	time_origin FLOAT, 
	clock VARCHAR(16) NOT NULL, 
	linktype INTEGER, 
	file_sha256 VARCHAR(64), 
	state VARCHAR(12) NOT NULL, 
	notes TEXT, 
	writer_host VARCHAR(255), 
	writer_pid INTEGER, 
	usbtrace_version VARCHAR(40), 
	command_line TEXT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_sessions_file_sha256 ON sessions (file_sha256);

CREATE TABLE usbtrace_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);

CREATE TABLE devices (
	session_id INTEGER NOT NULL, 
	bus INTEGER NOT NULL, 
	device INTEGER NOT NULL, 
	vid INTEGER, 
	pid INTEGER, 
	device_class INTEGER, 
	manufacturer TEXT, 
	product TEXT, 
	serial TEXT, 
	mass_storage_interfaces TEXT, 
	PRIMARY KEY (session_id, bus, device), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);

CREATE TABLE file_activity (
	session_id INTEGER NOT NULL, 
	id INTEGER NOT NULL, 
	scsi_seq INTEGER NOT NULL, 
	path TEXT, 
	operation VARCHAR(12) NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	file_offset BIGINT, 
	length BIGINT, 
	lba BIGINT, 
	command_offset BIGINT, 
	detail TEXT, 
	PRIMARY KEY (session_id, id), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);
CREATE INDEX ix_file_activity_command ON file_activity (session_id, scsi_seq);
CREATE INDEX ix_file_activity_path ON file_activity (session_id, path) WHERE path IS NOT NULL;

CREATE TABLE gaps (
	session_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	at FLOAT, 
	dropped INTEGER NOT NULL, 
	PRIMARY KEY (session_id, seq), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);

CREATE TABLE irps (
	session_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	irp_id VARCHAR(20) NOT NULL, 
	parent_irp_id VARCHAR(20), 
	position VARCHAR(8) NOT NULL, 
	major VARCHAR(32) NOT NULL, 
	minor VARCHAR(40), 
	ioctl VARCHAR(48), 
	status VARCHAR(48), 
	information BIGINT, 
	detail TEXT, 
	"offset" BIGINT, 
	length BIGINT, 
	file_object INTEGER, 
	submitted_at FLOAT, 
	completed_at FLOAT, 
	PRIMARY KEY (session_id, seq), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);
CREATE INDEX ix_irps_irp ON irps (session_id, irp_id);
CREATE INDEX ix_irps_parent ON irps (session_id, parent_irp_id);

CREATE TABLE scsi_commands (
	session_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	bus INTEGER, 
	device INTEGER, 
	lun INTEGER NOT NULL, 
	tag BIGINT NOT NULL, 
	opcode INTEGER NOT NULL, 
	name VARCHAR(40) NOT NULL, 
	cdb BLOB NOT NULL, 
	lba BIGINT, 
	blocks BIGINT, 
	data_direction VARCHAR(4) NOT NULL, 
	expected_length BIGINT NOT NULL, 
	data_length BIGINT NOT NULL, 
	data_truncated BOOLEAN NOT NULL, 
	residue BIGINT, 
	status VARCHAR(16) NOT NULL, 
	sense_key VARCHAR(24), 
	"asc" INTEGER, 
	ascq INTEGER, 
	irp_id VARCHAR(20) NOT NULL, 
	cbw_seq INTEGER NOT NULL, 
	csw_seq INTEGER, 
	submitted_at FLOAT, 
	completed_at FLOAT, 
	PRIMARY KEY (session_id, seq), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);
CREATE INDEX ix_scsi_commands_cbw ON scsi_commands (session_id, cbw_seq);

CREATE TABLE urbs (
	session_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	irp_id VARCHAR(20) NOT NULL, 
	record_number INTEGER, 
	submitted_at FLOAT, 
	completed_at FLOAT, 
	bus INTEGER, 
	device INTEGER, 
	endpoint INTEGER NOT NULL, 
	transfer_type VARCHAR(12) NOT NULL, 
	direction VARCHAR(3) NOT NULL, 
	urb_function VARCHAR(48), 
	status VARCHAR(48), 
	requested_length BIGINT, 
	actual_length BIGINT, 
	captured_length BIGINT NOT NULL, 
	truncated BOOLEAN NOT NULL, 
	setup BLOB, 
	data BLOB, 
	stream_id INTEGER, 
	PRIMARY KEY (session_id, seq), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);
CREATE INDEX ix_urbs_irp ON urbs (session_id, irp_id);

-- Views: the joins used most, ready to query.

-- A SCSI command with each of its data URBs (Bulk-Only: the bulk URBs of its device in
-- the data direction between its CBW and CSW); a command without data has one row with
-- the URB columns NULL.
CREATE VIEW command_data AS
SELECT c.session_id, c.seq AS command_seq, c.bus, c.device, c.lun, c.tag,
       c.name AS command, c.lba, c.blocks, c.data_direction, c.data_length,
       c.status AS command_status, c.submitted_at, c.completed_at,
       u.seq AS urb_seq, u.endpoint, u.status AS urb_status,
       u.requested_length, u.actual_length, u.captured_length, u.truncated, u.data
FROM scsi_commands c
LEFT JOIN urbs u ON u.session_id = c.session_id
 AND u.seq > c.cbw_seq AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000)
 AND u.bus IS NOT DISTINCT FROM c.bus AND u.device IS NOT DISTINCT FROM c.device
 AND u.transfer_type = 'bulk' AND u.direction = c.data_direction;

-- An upper READ or WRITE (above disk) with each pass of its SRB IRPs through the lower
-- position and the URB of that pass: one row per URB.
CREATE VIEW io_chain AS
SELECT r.session_id, r.seq AS request_seq, r.irp_id AS request_irp, r.major,
       r.offset, r.length, r.status AS request_status,
       r.submitted_at AS request_submitted_at, r.completed_at AS request_completed_at,
       s.seq AS srb_seq, s.irp_id AS srb_irp, s.status AS srb_status,
       u.seq AS urb_seq, u.bus, u.device, u.endpoint, u.transfer_type, u.direction,
       u.actual_length, u.status AS urb_status
FROM irps r
JOIN irps s ON s.session_id = r.session_id AND s.parent_irp_id = r.irp_id
 AND s.position = 'lower' AND s.seq > r.seq
 AND NOT EXISTS (SELECT 1 FROM irps r2 WHERE r2.session_id = r.session_id
                 AND r2.irp_id = r.irp_id AND r2.position = 'upper'
                 AND r2.seq > r.seq AND r2.seq < s.seq)
JOIN urbs u ON u.session_id = s.session_id AND u.seq = s.seq
WHERE r.position = 'upper' AND r.major IN ('read', 'write');

-- File activity (file data, metadata, file events) with the SCSI command whose blocks it
-- was.
CREATE VIEW file_activity_commands AS
SELECT f.session_id, f.id AS activity_id, f.path, f.operation, f.kind,
       f.file_offset, f.length, f.lba AS activity_lba, f.command_offset, f.detail,
       c.seq AS command_seq, c.bus, c.device, c.lun, c.name AS command, c.lba, c.blocks,
       c.status AS command_status, c.submitted_at, c.completed_at
FROM file_activity f
JOIN scsi_commands c ON c.session_id = f.session_id AND c.seq = f.scsi_seq;
