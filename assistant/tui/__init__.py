"""The Textual terminal UI (`mtp-assistant tui`): models, training, playground, benchmark, servers.

app.py holds the App; screens/ one screen per job; widgets/ the pieces they share; the
plain modules here (models_info, runs, servers, jobs) do the work without any UI, so
they are tested on their own and called from thread workers.
"""
