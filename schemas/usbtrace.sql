-- usbtrace database schema, version 2 (SQLite dialect).
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
CREATE INDEX ix_file_activity_path ON file_activity (session_id, path);

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
	PRIMARY KEY (session_id, seq), 
	FOREIGN KEY(session_id) REFERENCES sessions (id)
);
CREATE INDEX ix_urbs_irp ON urbs (session_id, irp_id);
