"""syncsnap's side-by-side benchmarks (``make bench``): snapshots against restic and borg, JSON serving against
hypercorn, SSE fan-out, and the raw limits of the machine. Writes docs/benchmarks.md.

Modules: ``_main`` (the run), ``_tree`` (the generated tree and its change set), ``_raw`` (raw limits),
``_daemon`` (starting syncsnapd, timing snapshots), ``_backup_tools`` (restic, borg), ``_serving`` (wrk,
hypercorn), ``_sse`` (fan-out), ``_report`` (tables). Run as their own processes: ``_poller`` (progress
latency), ``_fanout`` (SSE subscribers), ``_hypercorn_app`` (the baseline ASGI app).

``_scale`` (``python -m bench scale``, ``make bench-scale``): 100k/400k-file trees, a 4 GiB file and many
snapshots against restic and borg, with a py-spy profile; writes docs/benchmarks-scale.md. With
``_scale_report`` (its tables), ``_bigfile`` (the big file and its edits), ``_profile`` (py-spy).

``_store_bench``: the store's own benchmarks without the daemon (``python -m bench store-bench DIR``,
``python -m bench prune-bench DIR``).
"""
