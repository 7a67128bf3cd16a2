"""The Faust shell around the core, and its start-up. Never imports ``stream_app.lab``."""
