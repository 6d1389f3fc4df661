"""Writing what the views rendered: to the sinks (one per logger, in ``sinks/``) and to the
history files."""
