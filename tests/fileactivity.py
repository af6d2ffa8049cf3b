"""Rebuild file contents from file_activity rows and the payloads they point into."""

from __future__ import annotations

import sqlite3
from collections import defaultdict


def command_payloads(conn: sqlite3.Connection, session_id: int) -> dict[int, bytes]:
    """The data phase of every SCSI command, by scsi_commands.seq."""
    rows = conn.execute(
        "SELECT c.seq, (SELECT group_concat(hex(u.data), '') FROM urbs u "
        " WHERE u.session_id = c.session_id AND u.seq > c.cbw_seq "
        " AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000) AND u.bus IS c.bus "
        " AND u.device IS c.device AND u.transfer_type = 'bulk' AND u.data IS NOT NULL "
        " AND u.direction = CASE c.data_direction WHEN 'in' THEN 'in' ELSE 'out' END) "
        "FROM scsi_commands c WHERE c.session_id = ?", (session_id,)).fetchall()
    return {seq: bytes.fromhex(data or "") for seq, data in rows}


def final_names(conn: sqlite3.Connection, session_id: int) -> dict[str, str]:
    """Each path, followed through later renames and moves to its last name."""
    moves = conn.execute("SELECT substr(detail, 6), path FROM file_activity WHERE session_id=? "
                         "AND operation IN ('renamed', 'moved') ORDER BY id",
                         (session_id,)).fetchall()
    names: dict[str, str] = {}
    for old, new in moves:
        for key, value in list(names.items()):
            if value == old:
                names[key] = new
        names[old] = new
    return names


def rebuild(conn: sqlite3.Connection, session_id: int, operation: str) -> dict[str, bytearray]:
    """File contents from the bytes attributed to each path, under its final name; in
    command order (a row resolved late, when its file's metadata arrived, is logged late)."""
    payloads = command_payloads(conn, session_id)
    names = final_names(conn, session_id)
    files: dict[str, bytearray] = defaultdict(bytearray)
    for seq, path, offset, length, cmd_offset in conn.execute(
            "SELECT scsi_seq, path, file_offset, length, command_offset FROM file_activity "
            "WHERE session_id = ? AND kind = 'data' AND operation = ? ORDER BY scsi_seq, id",
            (session_id, operation)):
        data = payloads[seq][cmd_offset : cmd_offset + length]
        target = files[names.get(path, path)]
        if len(target) < offset + length:
            target.extend(bytes(offset + length - len(target)))
        target[offset : offset + length] = data
    return files
