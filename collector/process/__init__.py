"""`collector process`: merge every due hour of every server into the published outputs.

What is due: an hour whose end lies `process_grace_minutes` in the past and that has chunks
the ledger has not seen merged (new hours, and late chunks of hours already processed, e.g.
from a secondary that was cut off for a while). So a missed cron run, or days of downtime,
lose nothing: the next run processes every such hour, oldest first.

The ledger (`state_dir/process_ledger.json`) records, per hour, the chunks (server, name,
size) its outputs were made from. It is written after the outputs, so a crash in between
only means the hour is processed again, with byte-identical results. Raw chunks are kept
`raw_retention_days` after their hour so late data can still be merged with everything;
then the whole hour's chunks are removed together and the hour is marked pruned (a chunk
arriving even later cannot be merged completely any more: it is logged and removed).

Hour boundaries: a tweet belongs to the hour of its first receipt by any server. A copy
received again after the hour changed (a `backfill_minutes` reconnect, two servers' clocks
either side of the boundary) is dropped from the later hour: each hour is merged together
with the ids of the previous hour's last `LOOKBACK_MINUTES` of chunks, and those chunks are
part of what the ledger records for it, so a late one there reprocesses both hours.

Sources: this host's own chunks and every secondary's incoming folder, in `servers` order,
then the incoming folders of departed servers (in no `servers` any more: a destroyed main
after a promotion, a retired secondary), sorted, read like any secondary's. Their chunks are
merged until retention removes them, so an hour they captured keeps every id; the report
shows a departed server only in the hours it has chunks in (`reported_servers`).

Never fewer ids: before an hour's outputs are replaced, its existing IDs file is compared
with the new merge (`check_fewer_ids`). If the merge lacks any id the file holds, other than
ids the previous hour's tail received first (the rule above moved those, legitimately),
nothing of the hour is replaced (IDs, tweets, users, coverage, report line): the hour is
recorded in the ledger with `fewer_ids` so it is not merged again until its chunks change,
logged one line, counted (`ProcessResult.fewer_ids`) and alerted (`fewer_ids`, once per run).

Safety: one run at a time (`flock` on `state_dir/process.lock`); outputs are written
atomically (collector.fsutil); inputs are only ever read, and removed only by retention
after their hour's outputs exist.

Trust: a secondary's folder holds whatever its key pushed. The scan (`collector.layout.
scan_tree`) never follows a link below a source's root and reads only regular single-link
files named like that server's chunks, up to `max_chunk_mb`; anything else in the tree (a
symlink, FIFO, socket, device, hard link, oversized or misnamed file, unreadable folder) is
moved, never deleted, to `incoming_dst/.quarantine/<server_id>/<path>.<time>` (the main's
own: `data_storage_dst/.quarantine/<server_id>/`), logged one line each, counted in the
report's `quarantined` column of the hour whose folder held it, and alerted
(`entries_quarantined`); every other hour is processed as usual. A chunk is opened with
`O_NOFOLLOW|O_NONBLOCK` and checked again with fstat, so an entry swapped after the scan is
never read either, and at most the size fstat saw is read.

Speed and memory (measured numbers in docs/process.md): each hour is merged in two passes
(the source's `HourIndex`; collector.sources.x.merge for X). Pass 1 parses every line once,
split across helper interpreters for a large hour, and keeps one small entry per distinct
tweet; pass 2 reads the kept lines back in id order and renders each row once, straight
into a pool of xz threads (liblzma releases the GIL), so rendering overlaps compression on
every core. Hours are processed one
at a time, so memory follows the size of one hour, never the number of hours.

Modules, in the order of an hour's path: `scan` (where each server's chunks are, read
without trusting them), `quarantine` (what is no chunk is moved aside), `ledger` (what each
hour was made from), `plan` (which hours are due), `read` and `parallel` (pass 1, in helper
interpreters for a large hour), `write` (pass 2 and the report line), `compress` (xz on every
core), `fewer_ids` (the guard), `retention` (raw chunks removed after their days), `memory`
(glibc tuning) and `run` (the command's loop; `result` holds what it returns). The merge of
one source's records is the source's own (`collector.sources`).
"""
