"""Cross-process contracts shared by service and learner (event schema, adapter wire format, topic and
key names). Imports nothing else from the project."""
