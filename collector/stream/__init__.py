"""`collector stream`: capture into durable minute chunks, whatever the network does.

`run` (the two threads and the writer loop), `chunks` (the minute files and crash recovery),
`backoff` (when to reconnect), `health` (the live record `collector status` reads). The
transport itself is the source's (`collector.sources`).
"""
